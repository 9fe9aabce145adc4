'use strict';
// An hbloop protocol client (versions 1 and 2) for Node.js, written from protocol.md alone.
// Standard library only. The codec (FrameDecoder, parse*, encode*) is sans-IO; Client
// puts it on a TCP socket, or a TLS one, for one connection; ReconnectingClient makes
// one Client after another by the rules of protocol.md section 5 (R1 to R7). Statement
// ids (H3, T6, R2, ...) refer to protocol.md.

const { X509Certificate } = require('node:crypto');
const net = require('node:net');
const tls = require('node:tls');
const { EventEmitter } = require('node:events');

// The newest version spoken (H10): a client offers it and falls back to 1 once.
const PROTOCOL_VERSION = 2;
const VERSION_1 = 1;
const HEADER_SIZE = 6;
const MAX_NAME_BYTES = 64;
// A HELLO credential (a JWT, say) is 1 to 4096 bytes of printable ASCII, no spaces.
const MAX_TOKEN_BYTES = 4096;
const MAX_ERROR_MESSAGE_BYTES = 200;
// The hbloop server's default receive limit; F2 requires at least 1024.
const DEFAULT_MAX_PAYLOAD = 65536;
const MIN_MAX_PAYLOAD = 1024;
// How long the TCP connect plus the WELCOME may take before the attempt fails.
const HANDSHAKE_TIMEOUT_MS = 10000;
// After sending CLOSE or ERROR, wait this long for the server's FIN (C1, C3).
const LINGER_MS = 2000;
// Unsent output allowed before the server counts as a slow consumer and the connection
// is closed: the hbloop server's --max-pending default. It bounds the memory a
// server that does not read can make us hold.
const DEFAULT_MAX_PENDING = 256 * 1024;
// PINGs in a row sooner than half the interval before ERROR TOO_MANY_PINGS (rule T8),
// as the hbloop server counts them (--ping-strikes): a flood gets three PONGs.
const PING_STRIKES = 3;
// The shortest granted interval a client accepts (R5), in seconds: the hbloop
// server's own --min-interval default, so that no server left at its defaults is
// refused, while a server (or a path) granting 1 ms cannot make the client ping itself
// and the server to death.
const DEFAULT_MIN_INTERVAL = 0.1;
// The Python client's back-off (R1), in seconds: a first retry within half a second
// keeps a restart short; the 30 s cap bounds how long a client sits out an outage, and
// holds a client that keeps being refused to 4 attempts a minute on average (R2).
const DEFAULT_BACKOFF_BASE = 0.5;
const DEFAULT_BACKOFF_CAP = 30;
// What a ReconnectingClient with a token provider checks its settings with before the
// provider is first asked: any well-formed token, so that R4 applies to it.
const PROVIDED_TOKEN = 'provided';
// A6, as the Python clients: renew a token once this fraction of its remaining
// lifetime has passed (the last fifth leaves room for a slow provider and network
// before the server's A5 close), and ask again this often while the provider has
// nothing newer.
const REAUTH_FRACTION = 0.8;
const REAUTH_RETRY_MS = 5000;

const FrameType = Object.freeze({
  HELLO: 0x01, WELCOME: 0x02, PING: 0x03, PONG: 0x04, DATA: 0x05, CLOSE: 0x06, ERROR: 0x07,
  AUTH: 0x08,
});
const Scheme = Object.freeze({ CLIENT: 0, SERVER: 1 });
const Code = Object.freeze({
  NORMAL: 0x0000,
  GOING_AWAY: 0x0001,
  TIMEOUT: 0x0002,
  HANDSHAKE_TIMEOUT: 0x0003,
  TAKEN_OVER: 0x0004,
  CREDENTIALS_EXPIRED: 0x0005,
  UNSUPPORTED_VERSION: 0x0101,
  BAD_NAME: 0x0102,
  SERVER_FULL: 0x0103,
  UNAUTHORIZED: 0x0104,
  NAME_TAKEN: 0x0105,
  UNSUPPORTED_PROPERTY: 0x0106,
  FRAME_TOO_LARGE: 0x0201,
  UNKNOWN_TYPE: 0x0202,
  RESERVED_BITS: 0x0203,
  MALFORMED: 0x0204,
  HELLO_REQUIRED: 0x0205,
  DUPLICATE_HELLO: 0x0206,
  UNEXPECTED_FRAME: 0x0207,
  TOO_MANY_PINGS: 0x0208,
});

// Version 2's handshake properties (protocol.md section 1, Properties).
const Prop = Object.freeze({ TOKEN: 0x0001, MAX_PAYLOAD: 0x0002, RECONNECT_WINDOW: 0x0003, REAUTH: 0x0004 });
// The identifier's top bit: a receiver that does not know the property refuses.
const MUST_UNDERSTAND = 0x8000;
const HELLO_PROPS = new Set([Prop.TOKEN, Prop.MAX_PAYLOAD]);
const WELCOME_PROPS = new Set([Prop.MAX_PAYLOAD, Prop.RECONNECT_WINDOW, Prop.REAUTH]);
const AUTH_PROPS = new Set([Prop.TOKEN]);
// Registered properties of a fixed size, in bytes.
const PROPERTY_SIZES = new Map([[Prop.MAX_PAYLOAD, 4], [Prop.RECONNECT_WINDOW, 4], [Prop.REAUTH, 0]]);

const invert = (table) => Object.fromEntries(Object.entries(table).map(([k, v]) => [v, k]));
const TYPE_NAMES = invert(FrameType);
const CODE_NAMES = invert(Code);
const EMPTY = Buffer.alloc(0);

/** The registered name of a code, or null: unknown codes are accepted (section 6). */
function codeName(code) {
  return CODE_NAMES[code] ?? null;
}

function describeCode(code) {
  return codeName(code) ?? `0x${code.toString(16).padStart(4, '0')}`;
}

/**
 * The peer broke the protocol; `code` goes into the ERROR frame sent before closing.
 * From FrameDecoder.feed(), `frames` holds the complete frames that came before the
 * bad header in the same chunk, to be acted on first (section 9).
 */
class ProtocolError extends Error {
  constructor(code, message) {
    super(`${describeCode(code)}: ${message}`);
    this.code = code;
    this.codeName = codeName(code);
    this.frames = [];
  }
}

/** Settings a client cannot run with (R4, R5, TLS material): found before any packet. */
class ConfigError extends Error {}

/** DATA over the server's maximum payload (R6), refused before anything is sent. */
class PayloadTooLargeError extends RangeError {
  constructor(size, limit) {
    super(`DATA of ${size} bytes exceeds the server's maximum payload of ${limit} bytes`);
    this.size = size;
    this.limit = limit;
  }
}

// --- encoding -------------------------------------------------------------------

function encodeFrame(type, payload = EMPTY) {
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32BE(payload.length, 0);
  header.writeUInt8(type, 4); // offset 5, flags, stays zero (F1)
  return Buffer.concat([header, payload]);
}

// Characters a name may not contain and printable() escapes: Unicode controls (Cc:
// C0, DEL, C1), format characters (Cf: bidi overrides, zero-width spaces...) and the
// line and paragraph separators (Zl, Zp). Each can split, forge or disguise a log line.
// And code points unassigned in this runtime's tables (Cn), as protocol.md section 1 says.
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cn}]/u;
const UNSAFE_OR_BACKSLASH = /[\\\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cn}]/gu;
// Peer text shown on a line is cut to this many characters: more than an ERROR
// message (200 bytes) or a name (64 bytes) holds.
const PRINTABLE_LIMIT = 200;

function hasUnsafeCharacter(text) {
  return UNSAFE.test(text);
}

/**
 * Text from a peer, safe to print on one line: backslashes and unsafe characters
 * escaped as Python's hbloop.protocol.printable does (\x1b, \u202e, \U000e0001), cut to
 * `limit` characters (code points) of the original, marked by "...".
 */
function printable(text, limit = PRINTABLE_LIMIT) {
  const chars = Array.from(text);
  const escaped = chars.slice(0, limit).join('').replace(UNSAFE_OR_BACKSLASH, (char) => {
    if (char === '\\') return '\\\\';
    const code = char.codePointAt(0);
    if (code < 0x100) return `\\x${code.toString(16).padStart(2, '0')}`;
    return code < 0x10000 ? `\\u${code.toString(16).padStart(4, '0')}` : `\\U${code.toString(16).padStart(8, '0')}`;
  });
  return chars.length > limit ? `${escaped}...` : escaped;
}

/** Why `token` (a Buffer) cannot be a HELLO credential, or null if it can (H2). */
function tokenProblem(token) {
  if (token.length < 1 || token.length > MAX_TOKEN_BYTES) return `token must be 1 to ${MAX_TOKEN_BYTES} bytes`;
  if (!token.every((byte) => byte >= 0x21 && byte <= 0x7e)) return 'token must be printable ASCII without spaces';
  return null;
}

function encodeProperty(id, value) {
  const header = Buffer.alloc(4);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(value.length, 2);
  return Buffer.concat([header, value]);
}

function u32(value) {
  const raw = Buffer.alloc(4);
  raw.writeUInt32BE(value, 0);
  return raw;
}

/**
 * A HELLO of `version`; `token`, when given, is the credential: after the name in
 * version 1, a TOKEN property in version 2, which also carries `maxPayload` if given.
 */
function encodeHello(name, intervalMs, version = PROTOCOL_VERSION, token = null, maxPayload = null) {
  const raw = Buffer.from(name, 'utf8');
  if (raw.length < 1 || raw.length > MAX_NAME_BYTES || hasUnsafeCharacter(name)) {
    throw new RangeError(
      `a name is 1 to ${MAX_NAME_BYTES} UTF-8 bytes without control, format or separator characters`,
    );
  }
  const fixed = Buffer.alloc(6);
  fixed.writeUInt8(version, 0);
  fixed.writeUInt32BE(intervalMs, 1);
  fixed.writeUInt8(raw.length, 5);
  const parts = [fixed, raw];
  if (token !== null) {
    const secret = Buffer.from(token, 'utf8');
    const problem = tokenProblem(secret);
    if (problem) throw new RangeError(problem);
    if (version === VERSION_1) {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(secret.length, 0);
      parts.push(length, secret);
    } else {
      parts.push(encodeProperty(Prop.TOKEN, secret));
    }
  }
  if (version !== VERSION_1 && maxPayload !== null) parts.push(encodeProperty(Prop.MAX_PAYLOAD, u32(maxPayload)));
  return encodeFrame(FrameType.HELLO, Buffer.concat(parts));
}

function encodeWelcome({
  version = VERSION_1, scheme, intervalMs, timeoutMs, maxPayload = null, reconnectWindowMs = null, reauth = false,
}) {
  const payload = Buffer.alloc(10);
  payload.writeUInt8(version, 0);
  payload.writeUInt8(scheme, 1);
  payload.writeUInt32BE(intervalMs, 2);
  payload.writeUInt32BE(timeoutMs, 6);
  const parts = [payload];
  if (version !== VERSION_1) {
    if (maxPayload !== null) parts.push(encodeProperty(Prop.MAX_PAYLOAD, u32(maxPayload)));
    if (reconnectWindowMs !== null) parts.push(encodeProperty(Prop.RECONNECT_WINDOW, u32(reconnectWindowMs)));
    if (reauth) parts.push(encodeProperty(Prop.REAUTH, EMPTY));
  }
  return encodeFrame(FrameType.WELCOME, Buffer.concat(parts));
}

/** A client's AUTH: a fresh `token` for the OPEN connection (A1, A2). */
function encodeAuth(token) {
  const secret = Buffer.from(token, 'utf8');
  const problem = tokenProblem(secret);
  if (problem) throw new RangeError(problem);
  return encodeFrame(FrameType.AUTH, encodeProperty(Prop.TOKEN, secret));
}

function codePayload(code) {
  const payload = Buffer.alloc(2);
  payload.writeUInt16BE(code, 0);
  return payload;
}

function encodeClose(code) {
  return encodeFrame(FrameType.CLOSE, codePayload(code));
}

function encodeError(code, message = '') {
  let raw = Buffer.from(message, 'utf8');
  if (raw.length > MAX_ERROR_MESSAGE_BYTES) {
    // Cut at a byte bound, then drop a character the cut may have split.
    raw = Buffer.from(new TextDecoder().decode(raw.subarray(0, MAX_ERROR_MESSAGE_BYTES)).replace(/\ufffd$/, ''));
  }
  return encodeFrame(FrameType.ERROR, Buffer.concat([codePayload(code), raw]));
}

function encodeData(data) {
  return encodeFrame(FrameType.DATA, Buffer.from(data));
}

/** `data` as a DATA payload for a receiver whose maximum payload is `limit` (R6). */
function dataPayload(data, limit) {
  const payload = Buffer.from(data);
  if (payload.length > limit) throw new PayloadTooLargeError(payload.length, limit);
  return payload;
}

const PING_FRAME = encodeFrame(FrameType.PING);
const PONG_FRAME = encodeFrame(FrameType.PONG);

// --- decoding -------------------------------------------------------------------

/**
 * Incremental decoder (F4): feed it any split of the stream; it returns the complete
 * frames as {type, payload} and keeps the rest. Each header is checked as soon as its
 * six bytes are in (F1, F3), before any payload is buffered. It throws ProtocolError
 * on the first bad header, carrying the frames before it; the stream is unusable after.
 */
class FrameDecoder {
  constructor(maxPayload = DEFAULT_MAX_PAYLOAD) {
    if (maxPayload < MIN_MAX_PAYLOAD) throw new RangeError(`maxPayload must be >= ${MIN_MAX_PAYLOAD} (F2)`);
    this.maxPayload = maxPayload;
    this.pending = EMPTY;
  }

  get buffered() {
    return this.pending.length;
  }

  feed(chunk) {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const frames = [];
    let pos = 0;
    while (data.length - pos >= HEADER_SIZE) {
      const length = data.readUInt32BE(pos);
      const type = data.readUInt8(pos + 4);
      const violation = this.headerProblem(length, type, data.readUInt8(pos + 5));
      if (violation !== null) {
        violation.frames = frames;
        throw violation;
      }
      const end = pos + HEADER_SIZE + length;
      if (end > data.length) break;
      frames.push({ type, payload: Buffer.from(data.subarray(pos + HEADER_SIZE, end)) });
      pos = end;
    }
    this.pending = Buffer.from(data.subarray(pos));
    return frames;
  }

  /** F1's checks of a header, in F1's order: a ProtocolError, or null if it is good. */
  headerProblem(length, type, flags) {
    if (flags !== 0) return new ProtocolError(Code.RESERVED_BITS, `flags 0x${flags.toString(16)} must be zero`);
    if (!(type in TYPE_NAMES)) return new ProtocolError(Code.UNKNOWN_TYPE, `frame type 0x${type.toString(16)}`);
    if (length > this.maxPayload) {
      return new ProtocolError(Code.FRAME_TOO_LARGE, `payload of ${length} bytes exceeds ${this.maxPayload}`);
    }
    if (length !== 0 && (type === FrameType.PING || type === FrameType.PONG)) {
      return new ProtocolError(Code.MALFORMED, `${TYPE_NAMES[type]} must have an empty payload`);
    }
    return null;
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const lenientUtf8 = new TextDecoder('utf-8');

/**
 * Version 2's properties from `start` to the end of `payload` (F6): the values of the
 * `known` ones by identifier. Shape first (cut short, repeated, wrong size: MALFORMED),
 * then an unknown must-understand property (UNSUPPORTED_PROPERTY); others are skipped.
 */
function parseProperties(payload, start, known) {
  const found = new Map();
  const seen = new Set();
  let refused = null;
  let pos = start;
  while (pos < payload.length) {
    if (payload.length - pos < 4) throw new ProtocolError(Code.MALFORMED, 'a property header is cut short');
    const id = payload.readUInt16BE(pos);
    const length = payload.readUInt16BE(pos + 2);
    pos += 4;
    if (length > payload.length - pos) throw new ProtocolError(Code.MALFORMED, `property ${id} is cut short`);
    const bare = id & ~MUST_UNDERSTAND;
    if (seen.has(bare)) throw new ProtocolError(Code.MALFORMED, `property ${bare} is repeated`);
    seen.add(bare);
    if (known.has(bare)) {
      if ((PROPERTY_SIZES.get(bare) ?? length) !== length) {
        throw new ProtocolError(Code.MALFORMED, `property ${bare} of ${length} bytes`);
      }
      found.set(bare, payload.subarray(pos, pos + length));
    } else if (id & MUST_UNDERSTAND && refused === null) {
      refused = id;
    }
    pos += length;
  }
  if (refused !== null) {
    throw new ProtocolError(Code.UNSUPPORTED_PROPERTY, `must-understand property ${refused} is unknown`);
  }
  return found;
}

/** A MAX_PAYLOAD property's value, at least the 1024 bytes every receiver takes (F2). */
function maxPayloadOf(found) {
  const raw = found.get(Prop.MAX_PAYLOAD);
  if (raw === undefined) return null;
  const value = raw.readUInt32BE(0);
  if (value < MIN_MAX_PAYLOAD) throw new ProtocolError(Code.MALFORMED, `MAX_PAYLOAD ${value} is under ${MIN_MAX_PAYLOAD}`);
  return value;
}

/** A HELLO payload (version 1 or 2), checked in the order of H2: version, shape, name, credential. */
function parseHello(payload) {
  if (payload.length === 0) throw new ProtocolError(Code.MALFORMED, 'empty HELLO');
  const version = payload.readUInt8(0);
  if (version !== VERSION_1 && version !== PROTOCOL_VERSION) {
    throw new ProtocolError(Code.UNSUPPORTED_VERSION, `version ${version}`);
  }
  if (payload.length < 6) throw new ProtocolError(Code.MALFORMED, 'HELLO too short');
  const nameEnd = 6 + payload.readUInt8(5);
  const tokenStart = nameEnd + 2;
  let secret = null;
  let maxPayload = null;
  if (version === VERSION_1) {
    if (payload.length !== nameEnd) { // a credential follows the name
      if (payload.length < tokenStart) {
        throw new ProtocolError(Code.MALFORMED, 'HELLO name length disagrees with the frame');
      }
      if (payload.length !== tokenStart + payload.readUInt16BE(nameEnd)) {
        throw new ProtocolError(Code.MALFORMED, 'HELLO token length disagrees with the frame');
      }
      secret = payload.subarray(tokenStart);
    }
  } else {
    if (payload.length < nameEnd) throw new ProtocolError(Code.MALFORMED, 'HELLO name length disagrees with the frame');
    const found = parseProperties(payload, nameEnd, HELLO_PROPS);
    secret = found.get(Prop.TOKEN) ?? null;
    maxPayload = maxPayloadOf(found);
  }
  const nameLength = nameEnd - 6;
  if (nameLength < 1 || nameLength > MAX_NAME_BYTES) {
    throw new ProtocolError(Code.BAD_NAME, `name must be 1 to ${MAX_NAME_BYTES} bytes`);
  }
  let name;
  try {
    name = strictUtf8.decode(payload.subarray(6, nameEnd));
  } catch {
    throw new ProtocolError(Code.BAD_NAME, 'name is not valid UTF-8');
  }
  if (hasUnsafeCharacter(name)) {
    throw new ProtocolError(Code.BAD_NAME, 'name contains control, format or separator characters');
  }
  let token = null;
  if (secret !== null) {
    const problem = tokenProblem(secret);
    if (problem) throw new ProtocolError(Code.UNAUTHORIZED, problem);
    token = secret.toString('ascii');
  }
  const hello = { version, intervalMs: payload.readUInt32BE(1), name, token };
  return version === VERSION_1 ? hello : { ...hello, maxPayload };
}

/** A WELCOME payload answering a HELLO of `version`, as a client must check it (H3, F6). */
function parseWelcome(payload, version = VERSION_1) {
  if (payload.length < 10 || (version === VERSION_1 && payload.length !== 10)) {
    throw new ProtocolError(Code.MALFORMED, 'WELCOME must be 10 bytes');
  }
  const welcome = {
    version: payload.readUInt8(0),
    scheme: payload.readUInt8(1),
    intervalMs: payload.readUInt32BE(2),
    timeoutMs: payload.readUInt32BE(6),
  };
  if (welcome.version !== version) {
    throw new ProtocolError(Code.UNSUPPORTED_VERSION, `server answered version ${welcome.version} to ${version}`);
  }
  if (welcome.scheme !== Scheme.CLIENT && welcome.scheme !== Scheme.SERVER) {
    throw new ProtocolError(Code.MALFORMED, `unknown scheme ${welcome.scheme}`);
  }
  if (!(welcome.intervalMs > 0 && welcome.timeoutMs >= 2 * welcome.intervalMs)) {
    throw new ProtocolError(Code.MALFORMED, 'WELCOME needs 0 < interval and timeout >= 2 x interval');
  }
  if (version === VERSION_1) return welcome;
  const found = parseProperties(payload, 10, WELCOME_PROPS);
  const window = found.get(Prop.RECONNECT_WINDOW);
  return {
    ...welcome,
    maxPayload: maxPayloadOf(found),
    reconnectWindowMs: window === undefined ? null : window.readUInt32BE(0),
    reauth: found.has(Prop.REAUTH),
  };
}

/** An AUTH payload's token, or null for a server's answer, an empty block (A2, A3). */
function parseAuth(payload) {
  const secret = parseProperties(payload, 0, AUTH_PROPS).get(Prop.TOKEN);
  if (secret === undefined) return null;
  const problem = tokenProblem(secret);
  if (problem) throw new ProtocolError(Code.UNAUTHORIZED, problem);
  return secret.toString('ascii');
}

/** A JWT's `exp` (Unix seconds), read without its key; null for any other token (A5). */
function jwtExpiry(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let claims;
  try {
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return null;
  }
  const exp = claims === null || typeof claims !== 'object' ? undefined : claims.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? exp : null;
}

/** A6: ms from now until a fresh token should replace `token`; null if it has no exp. */
function reauthDelayMs(token) {
  const exp = token === null ? null : jwtExpiry(token);
  if (exp === null) return null;
  return Math.max(exp * 1000 - Date.now(), 0) * REAUTH_FRACTION;
}

function parseClose(payload) {
  if (payload.length !== 2) throw new ProtocolError(Code.MALFORMED, 'CLOSE must carry exactly a u16 code');
  return payload.readUInt16BE(0);
}

/** An ERROR's code and message; the message is for humans, so bad UTF-8 is replaced. */
function parseError(payload) {
  if (payload.length < 2) throw new ProtocolError(Code.MALFORMED, 'ERROR must start with a u16 code');
  return { code: payload.readUInt16BE(0), message: lenientUtf8.decode(payload.subarray(2)) };
}

// --- the rules of section 5 ------------------------------------------------------

// The only addresses a token may reach in plain text (R4): IPv4 127.0.0.0/8 and IPv6
// ::1 (a BlockList also matches their IPv4-mapped forms, ::ffff:127.0.0.1).
const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Whether a HELLO token may go in plain text to `host` (R4): to a loopback address
 * (127.0.0.0/8, ::1) or the name localhost (which RFC 6761 reserves for loopback), and
 * nowhere else. Judged from the text alone, without a lookup: any other name may
 * resolve anywhere.
 */
function plaintextTokenAllowed(host) {
  if (/^localhost\.?$/i.test(host)) return true;
  const family = net.isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 6 ? 'ipv6' : 'ipv4');
}

// ERROR codes a retry with the same HELLO cannot fix (H8).
const FINAL_ERRORS = new Set([Code.UNSUPPORTED_VERSION, Code.BAD_NAME, Code.UNAUTHORIZED, Code.UNSUPPORTED_PROPERTY]);
// CLOSE codes after which reconnecting would do harm: another client holds the name
// now, and the two would evict each other forever (H8, P4).
const FINAL_CLOSES = new Set([Code.TAKEN_OVER]);

/**
 * Whether a connection's ending is final (R3): the client stops, as no retry can help,
 * rather than reconnecting after its back-off. `ending` is a 'close' event's payload.
 */
function isFinal({ reason, code = null }) {
  switch (reason) {
    case 'peer_error': return FINAL_ERRORS.has(code);
    case 'peer_closed': return FINAL_CLOSES.has(code);
    case 'tls_error': return true;
    default: return false;
  }
}

/**
 * Capped exponential back-off with full jitter (R1), in seconds: the n-th delay since
 * the last reset is drawn uniformly from [0, min(cap, base x 2^n)]. `random` returns a
 * number in [0, 1), as Math.random does.
 */
class Backoff {
  constructor({ base = DEFAULT_BACKOFF_BASE, cap = DEFAULT_BACKOFF_CAP, random = Math.random } = {}) {
    if (!(base > 0 && cap >= base)) throw new RangeError('back-off needs 0 < base <= cap');
    this.base = base;
    this.cap = cap;
    this.random = random;
    this.attempt = 0;
  }

  /**
   * The next retry's delay, s; with a server's reconnect `window` (s, after CLOSE
   * GOING_AWAY: protocol.md R7), the longer of that delay and a uniformly random one
   * within the window, so that a hint only ever lengthens a wait.
   */
  nextDelay(window = 0) {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    if (ceiling < this.cap) this.attempt += 1; // at the cap, n need not grow any more
    const delay = this.random() * ceiling;
    return window > 0 ? Math.max(delay, this.random() * window) : delay;
  }

  reset() {
    this.attempt = 0;
  }
}

// --- the client -----------------------------------------------------------------

const State = Object.freeze({
  CONNECTING: 'connecting', AWAIT_WELCOME: 'await_welcome', OPEN: 'open', CLOSED: 'closed',
});

// A system error's code (ECONNRESET, EPIPE, ...): the network failed, not a TLS check.
const ERRNO_NAME = /^E[A-Z0-9]+$/;

/**
 * TLS options with their secure context built now, so that unreadable PEM, a key that
 * does not match its certificate, or a CA that holds no certificate (which
 * createSecureContext would silently ignore) is a ConfigError before any attempt (R3).
 */
function withSecureContext(options) {
  if (options.secureContext) return options;
  for (const ca of [options.ca ?? []].flat()) {
    try {
      new X509Certificate(ca); // throws unless `ca` holds a certificate
    } catch (err) {
      throw new ConfigError(`TLS settings: the CA is not a certificate: ${err.message}`);
    }
  }
  try {
    return { ...options, secureContext: tls.createSecureContext(options) };
  } catch (err) {
    throw new ConfigError(`TLS settings: ${err.message}`);
  }
}

/**
 * One connection to an hbloop server. Events:
 *   'welcome' {version, scheme, intervalMs, timeoutMs}  the handshake is done
 *   'message' Buffer                                    a DATA frame
 *   'heartbeat' {direction: 'in'|'out', type: 'PING'|'PONG'}
 *   'close' {reason, code, codeName, message}           once, when the connection ends
 * reason is one of: closed_locally, peer_closed, peer_error, timeout,
 * handshake_timeout, protocol_error, slow_consumer, socket_error, tls_error (a TLS
 * check failed before WELCOME: the server's certificate, the server refusing ours, TLS
 * to a plain port; a reset then is a socket_error).
 * `tls`: null for plain TCP, else options for tls.connect() such as {ca, cert, key,
 * servername} (PEM strings or Buffers; the server's certificate is always verified).
 * HELLO then goes out once the TLS handshake is done, within the handshake deadline.
 * `minInterval` (s): a WELCOME granting less is refused with ERROR MALFORMED (R5).
 * `peerMaxPayload` (bytes): the server's maximum payload until a version 2 WELCOME
 * states it (F2); send() throws PayloadTooLargeError past it (R6).
 * `version`: the HELLO's protocol version, 2 (the default) or 1 (H10).
 * `allowPlaintextToken`: send a token without TLS to a host that is not loopback (R4).
 * Bad settings throw (RangeError, ConfigError) here, before any packet.
 * No reconnection here: ReconnectingClient does that.
 */
class Client extends EventEmitter {
  constructor({
    host = '127.0.0.1', port, name, interval = 0, token = null, tls: tlsOptions = null,
    maxPayload = DEFAULT_MAX_PAYLOAD, maxPending = DEFAULT_MAX_PENDING,
    minInterval = DEFAULT_MIN_INTERVAL, peerMaxPayload = DEFAULT_MAX_PAYLOAD,
    allowPlaintextToken = false, version = PROTOCOL_VERSION,
  }) {
    super();
    this.host = host;
    this.port = port;
    this.connected = false; // TCP is up (TLS, if any, not necessarily)
    // Checks the name and the token early.
    if (version !== VERSION_1 && version !== PROTOCOL_VERSION) throw new RangeError('version must be 1 or 2');
    this.version = version;
    this.hello = encodeHello(name, Math.round(interval * 1000), version, token, maxPayload);
    if (!(minInterval >= 0)) throw new RangeError('minInterval must be a number >= 0');
    this.minIntervalMs = Math.round(minInterval * 1000);
    if (interval > 0 && Math.round(interval * 1000) < this.minIntervalMs) {
      throw new ConfigError(`interval ${interval}s is below minInterval ${minInterval}s: its own grant would be refused`);
    }
    if (!(peerMaxPayload >= MIN_MAX_PAYLOAD)) {
      throw new RangeError(`peerMaxPayload must be >= ${MIN_MAX_PAYLOAD}, which every receiver accepts (F2)`);
    }
    this.peerMaxPayload = peerMaxPayload;
    if (token !== null && tlsOptions === null && !allowPlaintextToken && !plaintextTokenAllowed(host)) {
      throw new ConfigError(
        `refusing to send the token in plain text to ${host}: anyone on the path could read it and `
        + 'connect as this client; use TLS, or allow it (allowPlaintextToken, --allow-plaintext-token) '
        + 'on a network you trust',
      );
    }
    this.tls = tlsOptions === null ? null : withSecureContext(tlsOptions);
    this.decoder = new FrameDecoder(maxPayload);
    this.maxPending = maxPending;
    this.state = State.CONNECTING;
    this.welcome = null;
    this.openedAt = null;
    this.socket = null;
    this.timer = null;
    this.lastSent = 0;
    this.lastRecv = 0;
    this.lastPing = -Infinity;
    this.lastPingIn = -Infinity;
    this.strikes = 0;
    this.throttled = false; // reading paused until the socket drains
  }

  connect() {
    const address = { host: this.host, port: this.port };
    const socket = this.tls === null
      ? net.connect(address)
      : tls.connect({ ...address, ...this.tls, rejectUnauthorized: true });
    this.socket = socket;
    socket.setNoDelay(true); // heartbeats must not wait for Nagle (section 8)
    this.arm(HANDSHAKE_TIMEOUT_MS);
    socket.on('connect', () => {
      this.connected = true;
      if (this.tls === null) this.sayHello();
    });
    socket.on('secureConnect', () => this.sayHello());
    socket.on('data', (chunk) => this.received(chunk));
    socket.on('end', () => this.endOfStream());
    socket.on('error', (err) => {
      // A TLS library error before WELCOME is a failed TLS check: during the handshake,
      // or just after it for the server's verdict on our certificate, which TLS 1.3
      // sends after the client has finished. A system error then is the network's
      // (ECONNRESET: a server shedding TLS handshakes closes at accept).
      const inTls = this.tls !== null && this.connected && this.state !== State.OPEN
        && typeof err.code === 'string' && !ERRNO_NAME.test(err.code);
      this.finished(inTls
        ? { reason: 'tls_error', detail: `${err.reason ?? err.message} (${err.code})` }
        : { reason: 'socket_error', detail: err.message });
    });
    socket.on('close', () => this.finished({ reason: 'socket_error', detail: 'socket closed' }));
    return this;
  }

  /** H1: HELLO, once the connection (and TLS, if any) is up. */
  sayHello() {
    this.state = State.AWAIT_WELCOME;
    this.lastRecv = now();
    this.write(this.hello);
  }

  /**
   * Send DATA; false when not open, or if the server has left too much unread. Throws
   * PayloadTooLargeError, whatever the state, for more than peerMaxPayload bytes (R6).
   */
  send(data) {
    const payload = dataPayload(data, this.peerMaxPayload);
    if (this.state !== State.OPEN) return false;
    return this.write(encodeFrame(FrameType.DATA, payload));
  }

  /**
   * A1: offer `token` in AUTH in place of the connection's credential; false when not
   * OPEN or where the WELCOME did not offer AUTH (REAUTH). 'reauthenticated' follows
   * when the server accepts it; a refusal ends the connection (UNAUTHORIZED).
   */
  sendAuth(token) {
    const frame = encodeAuth(token);
    if (this.state !== State.OPEN || !this.welcome.reauth) return false;
    return this.write(frame);
  }

  /**
   * C1: send CLOSE, half-close, and wait a bounded time for the server's FIN. Before
   * HELLO has gone out no frame may (H1): the attempt is just abandoned.
   */
  close(code = Code.NORMAL) {
    if (this.state === State.CONNECTING) {
      this.stop({ reason: 'closed_locally' });
      return;
    }
    this.end(encodeClose(code), { reason: 'closed_locally', code });
  }

  // --- internals ----------------------------------------------------------------

  /**
   * Queue a frame, with backpressure: once the socket buffers more than its high-water
   * mark, stop reading until it drains, so that a server that sends without reading
   * cannot make us pile up answers. Past maxPending unsent bytes the server is a slow
   * consumer and the connection is closed, as the hbloop server does; false then.
   */
  write(frame) {
    this.lastSent = now();
    if (!this.socket.write(frame) && !this.throttled) {
      this.throttled = true;
      this.socket.pause();
      this.socket.once('drain', () => {
        this.throttled = false;
        this.socket.resume();
      });
    }
    const unsent = this.socket.writableLength;
    if (unsent <= this.maxPending) return true;
    this.stop({ reason: 'slow_consumer', detail: `${unsent} bytes unsent` });
    return false;
  }

  received(chunk) {
    if (this.state === State.CLOSED) return; // draining until the FIN
    try {
      let frames;
      let violation = null;
      try {
        frames = this.decoder.feed(chunk);
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
        violation = err;
        frames = err.frames; // acted on before the violation (section 9)
      }
      if (frames.length) this.lastRecv = now(); // T5: complete frames only
      for (const frame of frames) {
        this.handle(frame);
        if (this.state === State.CLOSED) return;
      }
      if (violation !== null) throw violation;
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.end(encodeError(err.code, err.message), { reason: 'protocol_error', code: err.code, detail: err.message });
    }
  }

  handle({ type, payload }) {
    switch (type) {
      case FrameType.WELCOME:
        if (this.state !== State.AWAIT_WELCOME) throw new ProtocolError(Code.UNEXPECTED_FRAME, 'second WELCOME');
        this.opened(parseWelcome(payload, this.version));
        break;
      case FrameType.PING:
        if (this.state !== State.OPEN) throw new ProtocolError(Code.UNEXPECTED_FRAME, 'PING before WELCOME');
        this.emit('heartbeat', { direction: 'in', type: 'PING' });
        this.countPing();
        if (this.write(PONG_FRAME)) this.emit('heartbeat', { direction: 'out', type: 'PONG' }); // T4
        break;
      case FrameType.PONG:
        if (this.state !== State.OPEN) throw new ProtocolError(Code.UNEXPECTED_FRAME, 'PONG before WELCOME');
        this.emit('heartbeat', { direction: 'in', type: 'PONG' });
        break;
      case FrameType.DATA:
        if (this.state !== State.OPEN) throw new ProtocolError(Code.UNEXPECTED_FRAME, 'DATA before WELCOME');
        this.emit('message', payload);
        break;
      case FrameType.CLOSE: // C2: stop sending and close
        this.stop({ reason: 'peer_closed', code: parseClose(payload) });
        break;
      case FrameType.ERROR: {
        const { code, message } = parseError(payload);
        this.stop({ reason: 'peer_error', code, detail: message });
        break;
      }
      case FrameType.AUTH: // A1, A3: the answer to our AUTH, where WELCOME offered it
        if (this.state !== State.OPEN) throw new ProtocolError(Code.UNEXPECTED_FRAME, 'AUTH before WELCOME');
        if (!this.welcome.reauth) throw new ProtocolError(Code.UNKNOWN_TYPE, `frame type 0x0${type}`);
        if (parseAuth(payload) !== null) throw new ProtocolError(Code.MALFORMED, 'AUTH from a server carries a TOKEN');
        this.emit('reauthenticated');
        break;
      default: // HELLO: a server never sends it (H6)
        throw new ProtocolError(Code.UNEXPECTED_FRAME, `a server may not send ${TYPE_NAMES[type]}`);
    }
  }

  /**
   * T8, as the hbloop server applies it: a PING sooner than half the interval after
   * the previous one is a strike, a well-spaced one clears them, and PING_STRIKES in a
   * row end the connection. Before WELCOME there is no interval: any PING but the
   * first is a strike.
   */
  countPing() {
    const t = now();
    const floor = this.welcome ? this.welcome.intervalMs / 2 : Infinity;
    this.strikes = t - this.lastPingIn < floor ? this.strikes + 1 : 0;
    this.lastPingIn = t;
    if (this.strikes >= PING_STRIKES) {
      throw new ProtocolError(Code.TOO_MANY_PINGS, `${this.strikes} PINGs closer than half the interval`);
    }
  }

  opened(welcome) {
    if (welcome.intervalMs < this.minIntervalMs) {
      throw new ProtocolError(
        Code.MALFORMED, `granted interval ${welcome.intervalMs} ms is below this client's floor of ${this.minIntervalMs} ms`,
      );
    }
    this.welcome = welcome;
    if (welcome.maxPayload) this.peerMaxPayload = welcome.maxPayload; // R6, from version 2's WELCOME
    this.openedAt = this.lastRecv; // when WELCOME arrived: T6's clock starts there
    this.state = State.OPEN;
    this.emit('welcome', welcome);
    this.onDeadline();
  }

  /** The one timer: dead-server detection (T6) and, in client scheme, PINGs (T3). */
  onDeadline() {
    clearTimeout(this.timer); // when called directly, the handshake deadline is still armed
    this.timer = null;
    if (this.state === State.CLOSED) return;
    const t = now();
    if (this.state !== State.OPEN) {
      this.stop({ reason: 'handshake_timeout', detail: 'no WELCOME in time' });
      return;
    }
    const { intervalMs, timeoutMs, scheme } = this.welcome;
    const dueDead = this.lastRecv + timeoutMs;
    if (t >= dueDead) {
      // The server is presumed dead; CLOSE TIMEOUT tells it why if it is only slow.
      this.end(encodeClose(Code.TIMEOUT), {
        reason: 'timeout', code: Code.TIMEOUT, detail: `server silent for ${Math.round(t - this.lastRecv)} ms`,
      });
      return;
    }
    let due = dueDead;
    if (scheme === Scheme.CLIENT) {
      let pingAt = Math.max(Math.min(this.lastSent, this.lastRecv), this.lastPing) + intervalMs;
      if (t >= pingAt) {
        if (!this.write(PING_FRAME)) return;
        this.emit('heartbeat', { direction: 'out', type: 'PING' });
        this.lastPing = t;
        pingAt = t + intervalMs;
      }
      due = Math.min(due, pingAt);
    }
    this.arm(due - t);
  }

  arm(delayMs) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.onDeadline(), Math.max(delayMs, 0));
  }

  /** Send a last frame, half-close, and release the socket on the FIN or after LINGER_MS. */
  end(lastFrame, outcome) {
    if (this.state === State.CLOSED) return;
    if (!this.write(lastFrame)) return; // closed as a slow consumer instead
    this.socket.end();
    this.report(outcome);
    this.timer = setTimeout(() => this.socket.destroy(), LINGER_MS);
  }

  /** The server ended the connection (CLOSE, ERROR) or we gave up: close at once. */
  stop(outcome) {
    if (this.state === State.CLOSED) return;
    this.socket?.destroy(); // none if closed before connect()
    this.report(outcome);
  }

  /**
   * The server's FIN. Inside a frame it is a truncation (C5): ERROR MALFORMED, which a
   * server that only half-closed can still read; otherwise the connection just ended.
   */
  endOfStream() {
    const pending = this.decoder.buffered;
    if (pending > 0 && (this.state === State.AWAIT_WELCOME || this.state === State.OPEN)) {
      const detail = `EOF inside a frame, ${pending} bytes in`;
      this.end(encodeError(Code.MALFORMED, detail), { reason: 'protocol_error', code: Code.MALFORMED, detail });
      return;
    }
    this.finished({ reason: 'peer_closed', detail: 'EOF' });
  }

  /** The socket ended under us: a FIN after our CLOSE is expected, anything else is reported. */
  finished(outcome) {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.state === State.CLOSED) {
      this.socket.destroy();
      return;
    }
    this.stop(outcome);
  }

  report({ reason, code = null, detail = '' }) {
    this.state = State.CLOSED;
    clearTimeout(this.timer);
    this.timer = null;
    this.emit('close', { reason, code, codeName: code === null ? null : codeName(code), message: detail });
  }
}

/**
 * A client that stays connected (protocol.md section 5): one Client per attempt, a
 * full-jitter back-off before each retry (R1) that starts again from its base only
 * once a connection has proved itself by staying open for its granted timeout (R2),
 * and a stop on a final ending (R3). Takes Client's options, and:
 *   backoff    a Backoff (default: base 0.5 s, cap 30 s)
 *   reconnect  false: stop when the first connection ends, however it ends
 * `token` may also be a token provider: a function returning the token (or null, or a
 * Promise of either), asked before each attempt and, where the WELCOME offers AUTH
 * (REAUTH), again at 80 % of a JWT's remaining lifetime, the fresh token then offered
 * in AUTH so that the connection outlives the old one (A6).
 * Events: Client's 'welcome', 'message', 'heartbeat' and 'reauthenticated' (of whichever connection is
 * current), and
 *   'connecting' {attempt}  attempt 1, 2, ... starts
 *   'close' {reason, code, codeName, message, final, retryInMs}  a connection (or the
 *       wait for the next one) ended. `final`: by isFinal(). `retryInMs`: the wait
 *       before the next attempt, or null once the client has stopped for good (closed
 *       locally, a final ending, or reconnect false); `stopped` is then that ending.
 * Bad settings throw here, as Client's do, not at each attempt.
 */
class ReconnectingClient extends EventEmitter {
  constructor({ backoff = new Backoff(), reconnect = true, token = null, ...options }) {
    super();
    // A function is a token provider, asked before each attempt and before exp (A6).
    this.tokenProvider = typeof token === 'function' ? token : null;
    this.token = this.tokenProvider === null ? token : null;
    // The first attempt's Client checks the settings now (with a provider, as a client
    // that has a token: R4), and builds the TLS context every later attempt reuses.
    const first = new Client({ ...options, token: this.tokenProvider === null ? token : PROVIDED_TOKEN });
    this.client = this.tokenProvider === null ? this.track(first) : null;
    this.options = { ...options, token: this.token, tls: first.tls };
    this.renewTimer = null;
    this.peerMaxPayload = first.peerMaxPayload;
    this.backoff = backoff;
    this.reconnect = reconnect;
    this.closing = false;
    this.attempts = 0;
    this.provenAt = Infinity; // when the current connection has proved itself (R2)
    this.reconnectWindowMs = 0; // the current connection's RECONNECT_WINDOW (R7)
    this.retryTimer = null;
    this.stopped = null;
  }

  connect() {
    this.attempts += 1;
    this.provenAt = Infinity;
    this.reconnectWindowMs = 0;
    this.emit('connecting', { attempt: this.attempts });
    if (this.tokenProvider === null) {
      this.client ??= this.track(new Client(this.options));
      this.client.connect();
      return this;
    }
    this.askProvider().then((token) => {
      if (this.closing || this.stopped !== null) return;
      const client = new Client({ ...this.options, token }); // throws for a malformed token
      this.token = token;
      this.client = this.track(client);
      client.connect();
    }).catch((err) => this.ended({ reason: 'refused', code: null, codeName: null, message: `token: ${err.message}` }));
    return this;
  }

  /** The provider's token (it may return a Promise); null: none. */
  async askProvider() {
    return (await this.tokenProvider()) ?? null;
  }

  /** A6: renew the token of `client`'s connection before its exp, if it can be. */
  armRenewal(client, delayMs) {
    clearTimeout(this.renewTimer);
    this.renewTimer = delayMs === null ? null : setTimeout(() => this.renew(client), delayMs);
  }

  renew(client) {
    this.renewTimer = null;
    const later = () => {
      if (client === this.client) this.armRenewal(client, REAUTH_RETRY_MS);
    };
    this.askProvider().then((token) => {
      if (client !== this.client) return;
      if (token !== null && token !== this.token && client.sendAuth(token)) this.token = token;
      else later();
    }).catch(later); // a failing provider is asked again: the server's A5 close ends this
  }

  renewalDelay(client) {
    return this.tokenProvider === null || !client.welcome.reauth ? null : reauthDelayMs(this.token);
  }

  /** `client`, its events passed on as this client's. */
  track(client) {
    client.on('welcome', (welcome) => {
      // The moment T6 could first end it: a connection that lasts until then is proven.
      this.provenAt = client.openedAt + welcome.timeoutMs;
      this.reconnectWindowMs = welcome.reconnectWindowMs ?? 0;
      this.armRenewal(client, this.renewalDelay(client));
      this.emit('welcome', welcome);
    });
    client.on('reauthenticated', () => {
      this.armRenewal(client, this.renewalDelay(client));
      this.emit('reauthenticated');
    });
    client.on('message', (data) => this.emit('message', data));
    client.on('heartbeat', (beat) => this.emit('heartbeat', beat));
    client.on('close', (ending) => this.ended(ending));
    return client;
  }

  /** As Client's send(); false between connections too (nothing is queued). */
  send(data) {
    if (this.client !== null) return this.client.send(data);
    dataPayload(data, this.peerMaxPayload);
    return false;
  }

  /** Close the connection (C1), or stop waiting for the next one; no more attempts. */
  close(code = Code.NORMAL) {
    if (this.stopped !== null || this.closing) return;
    this.closing = true;
    if (this.client !== null) {
      this.client.close(code); // its 'close' event stops this client
      return;
    }
    clearTimeout(this.retryTimer);
    this.stop({ reason: 'closed_locally', code: null, codeName: null, message: '' }, false);
  }

  ended(ending) {
    this.client = null;
    this.armRenewal(null, null);
    if (ending.reason === 'peer_error' && ending.code === Code.UNSUPPORTED_VERSION
      && this.options.version !== VERSION_1 && !this.closing) {
      // A server that does not speak version 2: once, at once, in version 1 (H10).
      this.options = { ...this.options, version: VERSION_1 };
      this.retryTimer = setTimeout(() => this.connect(), 0);
      this.emit('close', { ...ending, final: false, retryInMs: 0 });
      return;
    }
    const final = isFinal(ending);
    if (ending.reason === 'closed_locally' || final || !this.reconnect || this.closing) {
      this.stop(ending, final);
      return;
    }
    if (now() >= this.provenAt) this.backoff.reset(); // R2: a handshake alone is no proof
    // R7: the hint of a draining server spreads its fleet's returns over its window.
    const hinted = ending.reason === 'peer_closed' && ending.code === Code.GOING_AWAY;
    const windowS = hinted ? this.reconnectWindowMs / 1000 : 0;
    const retryInMs = Math.round(this.backoff.nextDelay(windowS) * 1000);
    this.retryTimer = setTimeout(() => this.connect(), retryInMs);
    this.emit('close', { ...ending, final, retryInMs });
  }

  stop(ending, final) {
    this.stopped = ending;
    this.emit('close', { ...ending, final, retryInMs: null });
  }
}

function now() {
  return performance.now();
}

module.exports = {
  PROTOCOL_VERSION,
  VERSION_1,
  Prop,
  MUST_UNDERSTAND,
  HEADER_SIZE,
  MAX_NAME_BYTES,
  MAX_TOKEN_BYTES,
  DEFAULT_MAX_PAYLOAD,
  DEFAULT_MIN_INTERVAL,
  DEFAULT_BACKOFF_BASE,
  DEFAULT_BACKOFF_CAP,
  FrameType,
  TYPE_NAMES,
  Scheme,
  Code,
  codeName,
  describeCode,
  ProtocolError,
  ConfigError,
  PayloadTooLargeError,
  encodeFrame,
  encodeHello,
  encodeWelcome,
  encodeAuth,
  encodeClose,
  encodeError,
  encodeData,
  PING_FRAME,
  PONG_FRAME,
  FrameDecoder,
  parseHello,
  parseWelcome,
  parseAuth,
  jwtExpiry,
  parseProperties,
  parseClose,
  parseError,
  printable,
  plaintextTokenAllowed,
  isFinal,
  Backoff,
  Client,
  ReconnectingClient,
};
