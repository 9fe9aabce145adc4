// Uses hbloop.d.ts as an application would; `tsc --noEmit -p .` must pass. Each line
// marked ts-expect-error below is a misuse the declarations must reject (tsc fails if not).
import * as fs from 'node:fs';
import {
  Backoff, Client, Code, ConfigError, FrameDecoder, FrameType, PayloadTooLargeError,
  ReconnectingClient, codeName, encodeHello, isFinal, parseWelcome, plaintextTokenAllowed, printable,
} from './hbloop';
import type { CloseEvent, ReconnectingCloseEvent, Welcome } from './hbloop';

const once = new Client({ port: 7878, name: 'sensor-7', interval: 10, minInterval: 0.5 });
once.on('welcome', (w: Welcome) => console.log(w.intervalMs, w.timeoutMs, w.scheme === 0));
once.on('close', ({ reason, codeName: name }: CloseEvent) => console.log(reason, name));
once.connect();

const fleet = new ReconnectingClient({
  host: 'localhost',
  port: 7878,
  name: 'sensor-8',
  token: process.env.HBLOOP_TOKEN ?? null,
  tls: { ca: fs.readFileSync('ca.crt'), servername: 'localhost' },
  backoff: new Backoff({ base: 0.5, cap: 30 }),
  peerMaxPayload: 4096,
});
fleet.on('connecting', ({ attempt }) => console.log(`attempt ${attempt}`));
fleet.on('message', (data) => console.log(printable(data.toString('utf8'))));
fleet.on('close', (ending: ReconnectingCloseEvent) => {
  const wait: number | null = ending.retryInMs;
  console.log(ending.final, wait, isFinal(ending));
});
fleet.connect();
try {
  const sent: boolean = fleet.send(Buffer.alloc(8192));
  console.log(sent);
} catch (err) {
  if (err instanceof PayloadTooLargeError) console.log(err.size, err.limit);
  if (err instanceof ConfigError) console.log(err.message);
}
fleet.close(Code.GOING_AWAY);

const frames = new FrameDecoder().feed(encodeHello('alice', 10_000));
const welcome = parseWelcome(frames[0].payload);
const allowed: boolean = plaintextTokenAllowed('127.0.0.1');
const delay: number = new Backoff().nextDelay();
console.log(welcome, allowed, delay, codeName(Code.TAKEN_OVER), FrameType.PING);

// @ts-expect-error port is required
new Client({ name: 'x' });
// @ts-expect-error the interval is a number of seconds
new Client({ port: 1, name: 'x', interval: '10' });
// @ts-expect-error no such event
fleet.on('open', () => undefined);
// @ts-expect-error a 'close' listener gets an ending, not a string
once.on('close', (ending: string) => ending);
// @ts-expect-error backoff is a Backoff
new ReconnectingClient({ port: 1, name: 'x', backoff: 5 });
