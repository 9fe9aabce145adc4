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

let passed = 0;
let failed = 0;
for (const [group, check] of [['valid', checkValid], ['malformed', checkMalformed], ['streams', checkStream]]) {
  for (const vector of vectors[group]) {
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
