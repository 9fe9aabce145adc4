#!/usr/bin/env node
'use strict';
// A small command-line client on hbloop.js: connects, heartbeats, sends --send texts
// as DATA, prints one line per event on stdout, and exits 0 only after a clean,
// locally requested CLOSE (on --duration, SIGINT or SIGTERM).

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { Client, Code, printable } = require('./hbloop.js');

const USAGE = 'usage: node cli.js --port PORT [--host HOST] [--name NAME] [--interval S] '
  + '[--send TEXT]... [--duration S] [--tls [--ca FILE] [--cert FILE --key FILE]] '
  + '[--token-file FILE]';

// Where the HELLO token comes from without --token-file: a command line would show it
// to everyone running `ps`. The same variable as `hbloop client`'s.
const TOKEN_ENV = 'HBLOOP_TOKEN';

function main() {
  let options;
  try {
    ({ values: options } = parseArgs({
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string' },
        name: { type: 'string', default: `js-${process.pid}` },
        interval: { type: 'string', default: '0' },
        send: { type: 'string', multiple: true, default: [] },
        duration: { type: 'string' },
        tls: { type: 'boolean', default: false },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'token-file': { type: 'string' },
      },
    }));
  } catch (err) {
    return usage(err.message);
  }
  const port = Number(options.port);
  const interval = Number(options.interval);
  const duration = options.duration === undefined ? null : Number(options.duration);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return usage('--port must be 1-65535');
  if (!(interval >= 0)) return usage('--interval must be a number >= 0');
  if (duration !== null && !(duration > 0)) return usage('--duration must be a number > 0');

  if (!options.tls && (options.ca || options.cert || options.key)) return usage('--ca, --cert and --key need --tls');
  if (!options.cert !== !options.key) return usage('--cert and --key go together');

  let client;
  try {
    const read = (file) => (file === undefined ? undefined : fs.readFileSync(file));
    const tlsOptions = options.tls
      ? { ca: read(options.ca), cert: read(options.cert), key: read(options.key) }
      : null;
    const tokenFile = options['token-file'];
    // One trailing newline, as an editor or `echo` leaves it, is not part of the token.
    const token = tokenFile === undefined
      ? (process.env[TOKEN_ENV] || null)
      : fs.readFileSync(tokenFile, 'ascii').replace(/\n$/, '');
    client = new Client({ host: options.host, port, name: options.name, interval, token, tls: tlsOptions });
  } catch (err) {
    return usage(err.message);
  }
  client.on('welcome', (w) => {
    const scheme = w.scheme === 0 ? 'client' : 'server';
    console.log(`welcome scheme=${scheme} interval_ms=${w.intervalMs} timeout_ms=${w.timeoutMs}`);
    for (const text of options.send) client.send(Buffer.from(text, 'utf8'));
    if (duration !== null) setTimeout(() => client.close(Code.NORMAL), duration * 1000);
  });
  // Whatever the server sends stays on its one line: see printable().
  client.on('message', (data) => console.log(`data ${printable(data.toString('utf8'))}`));
  client.on('heartbeat', ({ direction, type }) => console.log(`${direction === 'in' ? 'got' : 'sent'} ${type}`));
  client.on('close', ({ reason, code, codeName, message }) => {
    const name = code === null ? '-' : (codeName ?? code);
    console.log(`close reason=${reason} code=${name}${message ? ` message=${printable(message)}` : ''}`);
    process.exitCode = reason === 'closed_locally' ? 0 : 1;
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => client.close(Code.NORMAL));
  client.connect();
  return undefined;
}

function usage(problem) {
  console.error(`hbloop-js: error: ${problem}\n${USAGE}`);
  process.exitCode = 2;
}

main();
