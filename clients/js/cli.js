#!/usr/bin/env node
'use strict';
// A command-line client on hbloop.js: connects, heartbeats, sends --send texts as
// DATA, prints one line per event on stdout, and reconnects by protocol.md section 5
// until a signal, --duration or a final ending stops it. Exit codes: 0 after a clean,
// locally requested stop; 1 after a final ending (or any ending, with --no-reconnect),
// named on one line on stderr; 2 for bad arguments or settings, named on one line.

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const {
  Backoff, Code, ConfigError, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_MIN_INTERVAL,
  PayloadTooLargeError, ReconnectingClient, printable,
} = require('./hbloop.js');

// Where the HELLO token comes from without --token-file: a command line would show it
// to everyone running `ps`. The same variable as `hbloop client`'s.
const TOKEN_ENV = 'HBLOOP_TOKEN';

const USAGE = `usage: hbloop-js --port PORT [options]

Connects to an hbloop server, heartbeats, and prints one line per event on stdout.
Reconnects with back-off until stopped (SIGINT, SIGTERM, SIGHUP, --duration) or until
an ending no retry can fix (protocol.md section 5).

options:
  --port PORT              server port (required)
  --host HOST              server address (default 127.0.0.1)
  --name NAME              this client's name, 1-64 UTF-8 bytes (default js-PID)
  --interval S             heartbeat interval to ask for, s (default 0: the server's)
  --min-interval S         refuse a granted interval below this, s (default ${DEFAULT_MIN_INTERVAL})
  --send TEXT              send TEXT as DATA after the first WELCOME (repeatable)
  --duration S             stop cleanly after S seconds (default: run until a signal)
  --no-reconnect           exit when the first connection ends
  --backoff-base S         reconnect back-off base, s (default ${DEFAULT_BACKOFF_BASE}); delays are
                           drawn from [0, min(max, base x 2^n)]
  --backoff-max S          reconnect back-off cap, s (default ${DEFAULT_BACKOFF_CAP}), at least the base
  --tls                    connect through TLS, verifying the server's certificate
  --ca FILE                  against this CA (default: Node's trusted CAs)
  --cert FILE --key FILE     presenting this client certificate (mutual TLS)
  --token-file FILE        the HELLO token (default: the ${TOKEN_ENV} variable), read
                           again before each connect and before the token's exp
  --allow-plaintext-token  send the token without TLS to an address that is not loopback
  -h, --help               show this help and exit

exit codes: 0 stopped cleanly; 1 a final ending (or any, with --no-reconnect);
2 bad arguments or settings. Errors are one line on stderr.`;

const EXIT_OK = 0;
const EXIT_FINAL = 1;
const EXIT_USAGE = 2;

/** A problem with the arguments or the files they name: exit code 2. */
class UsageError extends Error {}

function parse(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        help: { type: 'boolean', short: 'h', default: false },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string' },
        name: { type: 'string', default: `js-${process.pid}` },
        interval: { type: 'string', default: '0' },
        'min-interval': { type: 'string', default: String(DEFAULT_MIN_INTERVAL) },
        send: { type: 'string', multiple: true, default: [] },
        duration: { type: 'string' },
        'no-reconnect': { type: 'boolean', default: false },
        'backoff-base': { type: 'string', default: String(DEFAULT_BACKOFF_BASE) },
        'backoff-max': { type: 'string', default: String(DEFAULT_BACKOFF_CAP) },
        tls: { type: 'boolean', default: false },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'token-file': { type: 'string' },
        'allow-plaintext-token': { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    throw new UsageError(err.message);
  }
  return values;
}

/** The value of option `flag` as a number that passes `ok`, or a UsageError. */
function number(options, flag, ok, what) {
  const value = Number(options[flag]);
  if (!ok(value)) throw new UsageError(`--${flag} must be ${what}`);
  return value;
}

function read(file, flag, encoding) {
  try {
    return fs.readFileSync(file, encoding);
  } catch (err) {
    throw new UsageError(`cannot read ${flag} ${file}: ${err.code ?? err.message}`);
  }
}

/** The ReconnectingClient the options describe; UsageError or ConfigError if none. */
function makeClient(options) {
  const port = number(options, 'port', (v) => Number.isInteger(v) && v >= 1 && v <= 65535, '1-65535');
  const base = number(options, 'backoff-base', (v) => v > 0, 'a number > 0');
  const cap = number(options, 'backoff-max', (v) => v >= base, `a number >= --backoff-base (${base})`);
  if (!options.tls && (options.ca || options.cert || options.key)) throw new UsageError('--ca, --cert and --key need --tls');
  if (!options.cert !== !options.key) throw new UsageError('--cert and --key go together');
  const optional = (flag) => (options[flag] === undefined ? undefined : read(options[flag], `--${flag}`));
  const tokenFile = options['token-file'];
  // One trailing newline, as an editor or `echo` leaves it, is not part of the token.
  const readToken = () => read(tokenFile, '--token-file', 'ascii').replace(/\n$/, '');
  if (tokenFile !== undefined) readToken(); // unreadable at start: a usage error, exit 2
  // The file is read again before each connect and before the token's exp (A6), so
  // that a device whose file is refreshed keeps its connection.
  const token = tokenFile === undefined ? (process.env[TOKEN_ENV] || null) : readToken;
  return new ReconnectingClient({
    host: options.host,
    port,
    name: options.name,
    interval: number(options, 'interval', (v) => v >= 0, 'a number >= 0'),
    minInterval: number(options, 'min-interval', (v) => v >= 0, 'a number >= 0'),
    token,
    allowPlaintextToken: options['allow-plaintext-token'],
    tls: options.tls ? { ca: optional('ca'), cert: optional('cert'), key: optional('key') } : null,
    reconnect: !options['no-reconnect'],
    backoff: new Backoff({ base, cap }),
  });
}

function main() {
  let options;
  let client;
  let duration = null;
  let texts;
  try {
    options = parse(process.argv.slice(2));
    if (options.help) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (options.port === undefined) throw new UsageError('--port is required');
    if (options.duration !== undefined) duration = number(options, 'duration', (v) => v > 0, 'a number > 0');
    client = makeClient(options);
    texts = options.send.map((text) => Buffer.from(text, 'utf8'));
    const tooLarge = texts.find((data) => data.length > client.peerMaxPayload);
    if (tooLarge) throw new PayloadTooLargeError(tooLarge.length, client.peerMaxPayload);
  } catch (err) {
    if (!(err instanceof UsageError || err instanceof ConfigError || err instanceof RangeError)) throw err;
    console.error(`hbloop-js: error: ${err.message}${err instanceof UsageError ? ' (see --help)' : ''}`);
    return EXIT_USAGE;
  }
  const stopTimer = duration === null ? null : setTimeout(() => client.close(Code.NORMAL), duration * 1000);
  client.on('welcome', (w) => {
    const scheme = w.scheme === 0 ? 'client' : 'server';
    console.log(`welcome scheme=${scheme} interval_ms=${w.intervalMs} timeout_ms=${w.timeoutMs}`);
    for (const data of texts) client.send(data);
    texts = []; // once, after the first WELCOME: nothing is resent after a reconnect
  });
  // Whatever the server sends stays on its one line: see printable().
  client.on('message', (data) => console.log(`data ${printable(data.toString('utf8'))}`));
  client.on('heartbeat', ({ direction, type }) => console.log(`${direction === 'in' ? 'got' : 'sent'} ${type}`));
  client.on('reauthenticated', () => console.log('reauthenticated')); // A3: a fresh token accepted
  client.on('close', (ending) => {
    const { reason, code, codeName, message, final, retryInMs } = ending;
    const name = code === null ? '-' : (codeName ?? code);
    const line = `close reason=${reason} code=${name}${message ? ` message=${printable(message)}` : ''}`;
    console.log(line);
    if (retryInMs !== null) {
      console.log(`retry in_ms=${retryInMs}`);
      return;
    }
    clearTimeout(stopTimer);
    if (reason === 'closed_locally') {
      process.exitCode = EXIT_OK;
      return;
    }
    const why = final ? 'a final ending, no retry can fix it (protocol.md R3)' : '--no-reconnect';
    console.error(`hbloop-js: error: stopped: ${line.slice('close '.length)}: ${why}`);
    process.exitCode = EXIT_FINAL;
  });
  // Ctrl-C, a service stop, and a closed terminal, as for `hbloop client`.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => client.close(Code.NORMAL));
  client.connect();
  return undefined;
}

const code = main();
if (code !== undefined) process.exitCode = code;
