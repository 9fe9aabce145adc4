// Type declarations for hbloop.js, written by hand; tests/test_js_client.py checks them
// with `tsc --noEmit` against check_types.ts and against the module's exports.

/// <reference types="node" />

import { EventEmitter } from 'node:events';
import type { ConnectionOptions } from 'node:tls';

export declare const PROTOCOL_VERSION: 2;
export declare const VERSION_1: 1;
/** Version 2's handshake properties (protocol.md section 1, Properties). */
export declare const Prop: Readonly<{ TOKEN: 0x0001; MAX_PAYLOAD: 0x0002; RECONNECT_WINDOW: 0x0003; REAUTH: 0x0004 }>;
/** The identifier bit of a property its receiver must understand or refuse. */
export declare const MUST_UNDERSTAND: 0x8000;
export declare const HEADER_SIZE: 6;
export declare const MAX_NAME_BYTES: 64;
export declare const MAX_TOKEN_BYTES: 4096;
/** The hbloop server's maximum payload, and this client's (bytes). */
export declare const DEFAULT_MAX_PAYLOAD: 65536;
/** The default floor on the granted interval, s (R5). */
export declare const DEFAULT_MIN_INTERVAL: number;
/** The default back-off base and cap, s (R1). */
export declare const DEFAULT_BACKOFF_BASE: number;
export declare const DEFAULT_BACKOFF_CAP: number;

export declare const FrameType: Readonly<{
  HELLO: 0x01; WELCOME: 0x02; PING: 0x03; PONG: 0x04; DATA: 0x05; CLOSE: 0x06; ERROR: 0x07; AUTH: 0x08;
}>;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];
export type FrameTypeName = keyof typeof FrameType;
export declare const TYPE_NAMES: Readonly<Record<number, FrameTypeName>>;

export declare const Scheme: Readonly<{ CLIENT: 0; SERVER: 1 }>;
export type SchemeValue = (typeof Scheme)[keyof typeof Scheme];

export declare const Code: Readonly<{
  NORMAL: 0x0000;
  GOING_AWAY: 0x0001;
  TIMEOUT: 0x0002;
  HANDSHAKE_TIMEOUT: 0x0003;
  TAKEN_OVER: 0x0004;
  CREDENTIALS_EXPIRED: 0x0005;
  UNSUPPORTED_VERSION: 0x0101;
  BAD_NAME: 0x0102;
  SERVER_FULL: 0x0103;
  UNAUTHORIZED: 0x0104;
  NAME_TAKEN: 0x0105;
  UNSUPPORTED_PROPERTY: 0x0106;
  FRAME_TOO_LARGE: 0x0201;
  UNKNOWN_TYPE: 0x0202;
  RESERVED_BITS: 0x0203;
  MALFORMED: 0x0204;
  HELLO_REQUIRED: 0x0205;
  DUPLICATE_HELLO: 0x0206;
  UNEXPECTED_FRAME: 0x0207;
  TOO_MANY_PINGS: 0x0208;
}>;
export type CodeName = keyof typeof Code;

/** The registered name of a code, or null: unknown codes are accepted (section 6). */
export declare function codeName(code: number): CodeName | null;
/** The code's name, or its hex form (0x0301) when it has none. */
export declare function describeCode(code: number): string;

/** The peer broke the protocol; `code` goes into the ERROR frame sent before closing. */
export declare class ProtocolError extends Error {
  constructor(code: number, message: string);
  readonly code: number;
  readonly codeName: CodeName | null;
  /** From FrameDecoder.feed(): the complete frames before the bad header, to act on first. */
  frames: Frame[];
}

/** Settings a client cannot run with (R4, R5, TLS material), found before any packet. */
export declare class ConfigError extends Error {}

/** DATA over the server's maximum payload (R6), refused before anything is sent. */
export declare class PayloadTooLargeError extends RangeError {
  constructor(size: number, limit: number);
  readonly size: number;
  readonly limit: number;
}

export interface Frame {
  type: number;
  payload: Buffer;
}

export interface Hello {
  version: number;
  intervalMs: number;
  name: string;
  token: string | null;
  /** Version 2: the client's MAX_PAYLOAD, or null when not sent. */
  maxPayload?: number | null;
}

export interface Welcome {
  version: number;
  scheme: SchemeValue;
  intervalMs: number;
  timeoutMs: number;
  /** Version 2: the server's MAX_PAYLOAD (R6), or null when not sent. */
  maxPayload?: number | null;
  /** Version 2: the RECONNECT_WINDOW after CLOSE GOING_AWAY, ms, or null. */
  reconnectWindowMs?: number | null;
  /** Version 2: the server takes AUTH on this connection (REAUTH, A1). */
  reauth?: boolean;
}

export declare function encodeFrame(type: number, payload?: Uint8Array): Buffer;
export declare function encodeHello(
  name: string, intervalMs: number, version?: number, token?: string | null, maxPayload?: number | null,
): Buffer;
export declare function encodeWelcome(welcome: {
  version?: number; scheme: number; intervalMs: number; timeoutMs: number;
  maxPayload?: number | null; reconnectWindowMs?: number | null; reauth?: boolean;
}): Buffer;
/** A client's AUTH frame offering a fresh `token` (A1). */
export declare function encodeAuth(token: string): Buffer;
export declare function encodeClose(code: number): Buffer;
export declare function encodeError(code: number, message?: string): Buffer;
export declare function encodeData(data: Uint8Array | string): Buffer;
export declare const PING_FRAME: Buffer;
export declare const PONG_FRAME: Buffer;

/** Incremental decoder (F4); throws ProtocolError on the first bad header. */
export declare class FrameDecoder {
  constructor(maxPayload?: number);
  readonly maxPayload: number;
  /** Bytes held for an incomplete frame. */
  readonly buffered: number;
  feed(chunk: Buffer): Frame[];
}

export declare function parseHello(payload: Buffer): Hello;
/** The WELCOME answering a HELLO of `version` (default 1). */
export declare function parseWelcome(payload: Buffer, version?: number): Welcome;
/** Version 2's properties from `start`: the known ones' values by identifier (F6). */
export declare function parseProperties(payload: Buffer, start: number, known: ReadonlySet<number>): Map<number, Buffer>;
/** An AUTH payload's token, or null for a server's (empty) answer (A2, A3). */
export declare function parseAuth(payload: Buffer): string | null;
/** A JWT's `exp` (Unix seconds), read without its key; null for any other token. */
export declare function jwtExpiry(token: string): number | null;
export declare function parseClose(payload: Buffer): number;
export declare function parseError(payload: Buffer): { code: number; message: string };

/** Peer text made safe for one line: unsafe characters escaped, cut at `limit`. */
export declare function printable(text: string, limit?: number): string;
/** Whether a token may go in plain text to `host` (R4): loopback only, no lookup. */
export declare function plaintextTokenAllowed(host: string): boolean;
/** Whether an ending is final (R3): stop rather than reconnect. */
export declare function isFinal(ending: { reason: CloseReason; code?: number | null }): boolean;

/** Capped exponential back-off with full jitter (R1), in seconds. */
export declare class Backoff {
  constructor(options?: { base?: number; cap?: number; random?: () => number });
  readonly base: number;
  readonly cap: number;
  /** n: retries since the last reset (it stops growing at the cap). */
  readonly attempt: number;
  /**
   * The next delay, s: uniform in [0, min(cap, base x 2^n)]; with a server's reconnect
   * `window` (s, after CLOSE GOING_AWAY: R7), the longer of that and a uniform delay
   * within the window.
   */
  nextDelay(window?: number): number;
  reset(): void;
}

export type CloseReason =
  | 'closed_locally'
  | 'peer_closed'
  | 'peer_error'
  | 'timeout'
  | 'handshake_timeout'
  | 'protocol_error'
  | 'slow_consumer'
  | 'socket_error'
  | 'tls_error'
  /** ReconnectingClient: its token provider failed (threw or rejected) before an attempt. */
  | 'refused';

export interface CloseEvent {
  reason: CloseReason;
  /** The CLOSE or ERROR code, if a frame carried one. */
  code: number | null;
  codeName: CodeName | null;
  /** An ERROR's message, or what went wrong; peer text: print it through printable(). */
  message: string;
}

export interface HeartbeatEvent {
  direction: 'in' | 'out';
  type: 'PING' | 'PONG';
}

export interface ClientOptions {
  host?: string;
  port: number;
  name: string;
  /** Interval to ask for, s; 0 asks for the server's default. */
  interval?: number;
  /** HELLO credential: 1-4096 bytes of printable ASCII. */
  token?: string | null;
  /** null for plain TCP; else tls.connect() options (ca, cert, key, servername, ...). */
  tls?: ConnectionOptions | null;
  /** Largest payload accepted from the server, bytes (>= 1024). */
  maxPayload?: number;
  /** Unsent bytes past which the server is a slow consumer. */
  maxPending?: number;
  /** Floor on the granted interval, s (R5); default 0.1. */
  minInterval?: number;
  /** The server's maximum payload, bytes (R6), until a version 2 WELCOME states it; default 65536. */
  peerMaxPayload?: number;
  /** The HELLO's version: 2 (default; falls back to 1 once, H10) or 1. */
  version?: 1 | 2;
  /** Send a token without TLS to a host that is not loopback (R4). */
  allowPlaintextToken?: boolean;
}

/** One connection to an hbloop server; no reconnection (see ReconnectingClient). */
export declare class Client extends EventEmitter {
  constructor(options: ClientOptions);
  readonly host: string;
  readonly port: number;
  readonly welcome: Welcome | null;
  /** When WELCOME arrived (performance.now(), ms), or null before. */
  readonly openedAt: number | null;
  readonly peerMaxPayload: number;
  connect(): this;
  /** false when not open or the server reads too slowly; throws PayloadTooLargeError. */
  send(data: Uint8Array | string): boolean;
  close(code?: number): void;
  /** A1: offer `token` in AUTH; false when not open or the WELCOME did not offer AUTH. */
  sendAuth(token: string): boolean;

  on(event: 'welcome', listener: (welcome: Welcome) => void): this;
  on(event: 'message', listener: (data: Buffer) => void): this;
  on(event: 'heartbeat', listener: (beat: HeartbeatEvent) => void): this;
  on(event: 'reauthenticated', listener: () => void): this;
  on(event: 'close', listener: (ending: CloseEvent) => void): this;
  once(event: 'welcome', listener: (welcome: Welcome) => void): this;
  once(event: 'message', listener: (data: Buffer) => void): this;
  once(event: 'heartbeat', listener: (beat: HeartbeatEvent) => void): this;
  once(event: 'close', listener: (ending: CloseEvent) => void): this;
}

/** A token provider: asked before each attempt and before the token's exp (A6). */
export type TokenProvider = () => string | null | Promise<string | null>;

export interface ReconnectingClientOptions extends Omit<ClientOptions, 'token'> {
  /** A fixed HELLO credential, or a provider of fresh ones (renewed in band, A6). */
  token?: string | null | TokenProvider;
  /** Default: new Backoff() (base 0.5 s, cap 30 s). */
  backoff?: Backoff;
  /** false: stop when the first connection ends. Default true. */
  reconnect?: boolean;
}

export interface ReconnectingCloseEvent extends CloseEvent {
  /** The ending is final (R3). */
  final: boolean;
  /** Wait before the next attempt, ms; null once the client has stopped for good. */
  retryInMs: number | null;
}

/** A client that stays connected by the rules of protocol.md section 5. */
export declare class ReconnectingClient extends EventEmitter {
  constructor(options: ReconnectingClientOptions);
  readonly backoff: Backoff;
  readonly peerMaxPayload: number;
  /** Attempts started so far. */
  readonly attempts: number;
  /** The ending it stopped on, once it has stopped for good. */
  readonly stopped: CloseEvent | null;
  connect(): this;
  /** As Client's; false between connections too (nothing is queued). */
  send(data: Uint8Array | string): boolean;
  /** Close the connection, or stop waiting for the next one; no more attempts. */
  close(code?: number): void;

  on(event: 'connecting', listener: (attempt: { attempt: number }) => void): this;
  on(event: 'welcome', listener: (welcome: Welcome) => void): this;
  on(event: 'message', listener: (data: Buffer) => void): this;
  on(event: 'heartbeat', listener: (beat: HeartbeatEvent) => void): this;
  on(event: 'reauthenticated', listener: () => void): this;
  on(event: 'close', listener: (ending: ReconnectingCloseEvent) => void): this;
  once(event: 'connecting', listener: (attempt: { attempt: number }) => void): this;
  once(event: 'welcome', listener: (welcome: Welcome) => void): this;
  once(event: 'message', listener: (data: Buffer) => void): this;
  once(event: 'heartbeat', listener: (beat: HeartbeatEvent) => void): this;
  once(event: 'close', listener: (ending: ReconnectingCloseEvent) => void): this;
}
