#!/usr/bin/env node
'use strict';
// Runs tests/vectors.json through hbloop.js: every valid frame must decode to its
// fields and re-encode to its bytes, every malformed one must raise its error code
// (header errors from the 6 header bytes alone), every stream must split as stated.
// Prints one line per failure and a summary; exits 1 on any mismatch.

const fs = require('node:fs');
const path = require('node:path');
const assert = require('node:assert');
const hb = require('./hbloop.js');

const VECTORS_PATH = process.argv[2] ?? path.join(__dirname, '..', '..', 'tests', 'vectors.json');
const vectors = JSON.parse(fs.readFileSync(VECTORS_PATH, 'utf8'));
const unhex = (text) => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** A payload decoded into the vectors' field names. */
function fields(type, payload) {
  switch (type) {
    case hb.FrameType.HELLO: {
      const h = hb.parseHello(payload);
      return { version: h.version, interval_ms: h.intervalMs, name: h.name, token: h.token };
    }
    case hb.FrameType.WELCOME: {
      const w = hb.parseWelcome(payload);
      return { version: w.version, scheme: w.scheme, interval_ms: w.intervalMs, timeout_ms: w.timeoutMs };
    }
    case hb.FrameType.DATA:
      return { data_hex: payload.toString('hex') };
    case hb.FrameType.CLOSE: {
      const code = hb.parseClose(payload);
      return { code, code_name: hb.codeName(code) };
    }
    case hb.FrameType.ERROR: {
      const { code, message } = hb.parseError(payload);
      return { code, code_name: hb.codeName(code), message };
    }
    default:
      return {};
  }
}

/** The frame rebuilt from a vector's fields by the encoders. */
function encode(type, f) {
  switch (type) {
    case 'HELLO': return hb.encodeHello(f.name, f.interval_ms, f.version, f.token);
    case 'WELCOME': return hb.encodeWelcome({ version: f.version, scheme: f.scheme, intervalMs: f.interval_ms, timeoutMs: f.timeout_ms });
    case 'PING': return hb.PING_FRAME;
    case 'PONG': return hb.PONG_FRAME;
    case 'DATA': return hb.encodeData(Buffer.from(f.data_hex, 'hex'));
    case 'CLOSE': return hb.encodeClose(f.code);
    case 'ERROR': return hb.encodeError(f.code, f.message);
    default: throw new Error(`no encoder for ${type}`);
  }
}

function decodeOne(bytes, split) {
  const decoder = new hb.FrameDecoder(vectors.max_payload);
  const frames = [];
  const step = split ? 1 : bytes.length;
  for (let i = 0; i < bytes.length; i += step) frames.push(...decoder.feed(bytes.subarray(i, i + step)));
  assert.strictEqual(frames.length, 1, 'expected exactly one frame');
  assert.strictEqual(decoder.buffered, 0, 'bytes left over');
  return { type: hb.TYPE_NAMES[frames[0].type], fields: fields(frames[0].type, frames[0].payload) };
}

function checkValid(v) {
  const bytes = unhex(v.hex);
  for (const split of [false, true]) assert.deepStrictEqual(decodeOne(bytes, split), { type: v.type, fields: v.fields });
  assert.strictEqual(encode(v.type, v.fields).toString('hex'), bytes.toString('hex'), 'encoder disagrees');
}

function checkMalformed(v) {
  const bytes = unhex(v.hex);
  const fed = v.stage === 'header' ? bytes.subarray(0, hb.HEADER_SIZE) : bytes;
  assert.throws(() => decodeOne(fed, false), (err) => {
    assert.ok(err instanceof hb.ProtocolError, `not a ProtocolError: ${err}`);
    assert.strictEqual(err.codeName, v.error);
    return true;
  });
}

function checkStream(v) {
  const decoder = new hb.FrameDecoder(vectors.max_payload);
  const frames = v.chunks.flatMap((chunk) => decoder.feed(unhex(chunk)));
  const rebuilt = frames.map((f) => hb.encodeFrame(f.type, f.payload).toString('hex'));
  assert.deepStrictEqual(rebuilt, v.frames);
  assert.strictEqual(decoder.buffered, v.pending);
}

/** A version 2 HELLO, WELCOME or AUTH in the vectors' names (the raw properties aside). */
function v2Fields(type, payload) {
  if (type === hb.FrameType.AUTH) return { token: hb.parseAuth(payload) };
  if (type === hb.FrameType.HELLO) {
    const h = hb.parseHello(payload);
    return { version: h.version, interval_ms: h.intervalMs, name: h.name, token: h.token, max_payload: h.maxPayload };
  }
  const w = hb.parseWelcome(payload, 2);
  return {
    version: w.version,
    scheme: w.scheme,
    interval_ms: w.intervalMs,
    timeout_ms: w.timeoutMs,
    max_payload: w.maxPayload,
    reconnect_window_ms: w.reconnectWindowMs,
    reauth: w.reauth,
  };
}

function decodeV2(bytes) {
  const frames = new hb.FrameDecoder(vectors.max_payload).feed(bytes);
  assert.strictEqual(frames.length, 1, 'expected exactly one frame');
  return frames[0];
}

function checkV2Valid(v) {
  const bytes = unhex(v.hex);
  const frame = decodeV2(bytes);
  assert.strictEqual(hb.TYPE_NAMES[frame.type], v.type);
  const { properties, ...expected } = v.fields;
  const got = v2Fields(frame.type, frame.payload);
  assert.deepStrictEqual(got, expected);
  // Where the properties are those the encoder writes, in its order, it must rebuild the bytes.
  const f = expected;
  const written = {
    HELLO: () => [f.token !== null && hb.Prop.TOKEN, f.max_payload !== null && hb.Prop.MAX_PAYLOAD],
    WELCOME: () => [
      f.max_payload !== null && hb.Prop.MAX_PAYLOAD, f.reconnect_window_ms !== null && hb.Prop.RECONNECT_WINDOW,
      f.reauth && hb.Prop.REAUTH,
    ],
    AUTH: () => [f.token !== null && hb.Prop.TOKEN],
  }[v.type]();
  if (JSON.stringify(written.filter(Boolean)) !== JSON.stringify(properties.map((p) => p.id))) return;
  if (v.type === 'AUTH' && f.token === null) return; // a server's answer: no client encodes it
  const rebuilt = {
    HELLO: () => hb.encodeHello(f.name, f.interval_ms, 2, f.token, f.max_payload),
    WELCOME: () => hb.encodeWelcome({
      version: 2, scheme: f.scheme, intervalMs: f.interval_ms, timeoutMs: f.timeout_ms,
      maxPayload: f.max_payload, reconnectWindowMs: f.reconnect_window_ms, reauth: f.reauth,
    }),
    AUTH: () => hb.encodeAuth(f.token),
  }[v.type]();
  assert.strictEqual(rebuilt.toString('hex'), bytes.toString('hex'), 'encoder disagrees');
}

function checkV2Malformed(v) {
  const frame = decodeV2(unhex(v.hex));
  assert.throws(() => v2Fields(frame.type, frame.payload), (err) => {
    assert.ok(err instanceof hb.ProtocolError, `not a ProtocolError: ${err}`);
    assert.strictEqual(err.codeName, v.error);
    return true;
  });
}

let passed = 0;
let failed = 0;
const groups = [
  ['valid', vectors.valid, checkValid],
  ['malformed', vectors.malformed, checkMalformed],
  ['streams', vectors.streams, checkStream],
  ['v2 valid', vectors.v2.valid, checkV2Valid],
  ['v2 malformed', vectors.v2.malformed, checkV2Malformed],
];
for (const [group, list, check] of groups) {
  for (const vector of list) {
    try {
      check(vector);
      passed += 1;
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${group}: ${vector.name}: ${err.message.split('\n')[0]}`);
    }
  }
}
console.log(`${passed} vectors passed, ${failed} failed`);
process.exitCode = failed || passed === 0 ? 1 : 0;
