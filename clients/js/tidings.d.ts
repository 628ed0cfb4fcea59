// Types of tidings.js, the client of the tidings WebSocket pub/sub server.

/** Any JSON value: what a message carries. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface TidingsOptions {
  /** A JWT sent at each connection (as the subprotocols tidings.jwt and tidings.jwt.<token>). */
  token?: string;
  /** Called before each connection attempt; its token replaces `token`. */
  getToken?: () => string | undefined | Promise<string | undefined>;
  /** The WebSocket constructor: globalThis.WebSocket by default; in Node.js 20, the `ws` package. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
  /** Milliseconds: the first reconnect delay's bound (default 500); the bound doubles per failure. */
  minDelay?: number;
  /** Milliseconds: the largest reconnect delay (default 20000). */
  maxDelay?: number;
  /** Milliseconds of silence before a ping (default 25000); twice that with nothing received is a dead connection. */
  pingInterval?: number;
  /** Publishes kept while disconnected (default 100); more are rejected with code "queue_full". */
  queueSize?: number;
  /** false: a publish while disconnected is rejected at once with code "disconnected" (default true). */
  queueWhileDisconnected?: boolean;
}

/** What the client needs of a WebSocket (browsers' and the ws package's both have it). */
export interface WebSocketLike {
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface MessageMeta {
  topic: string;
  /** The message's offset, for topics with history. */
  offset?: number;
  /** Messages the server skipped for this slow subscriber just before this one (--slow-policy drop). */
  missed?: number;
}

export interface DisconnectEvent {
  /** The close code (1006 when the connection was lost or found dead). */
  code: number;
  reason: string;
  /** The HTTP status of a refused handshake, where the WebSocket shows it (the ws package, not browsers). */
  status?: number;
  /** false: the client stopped for good (a refusal that retrying will not change, or close()). */
  willRetry: boolean;
  /** Whether the connection had opened (false for a failed attempt). */
  wasConnected?: boolean;
}

/** The server's subscribe reply. */
export interface SubscribedReply {
  status: 'subscribed';
  topic: string;
  epoch?: string;
  offset?: number;
  recovered?: boolean;
}

/** A gap: the server said recovered:false (the reply), or the offsets jumped. */
export type GapEvent = SubscribedReply | { topic: string; offset: number; missed: number };

/** An Error with the server's code (or the client's: disconnected, queue_full, closed). */
export interface TidingsError extends Error {
  code: string;
}

export interface Subscription {
  readonly topic: string;
  on(event: 'subscribed' | 'recovered', fn: (reply: SubscribedReply) => void): this;
  on(event: 'gap', fn: (gap: GapEvent) => void): this;
  on(event: 'error', fn: (err: TidingsError) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
  unsubscribe(): void;
}

export class Tidings {
  constructor(url: string, options?: TidingsOptions);
  /** Whether a connection is open now. */
  readonly connected: boolean;
  subscribe(
    topic: string,
    onMessage: (payload: Json, meta: MessageMeta) => void,
    options?: { recover?: boolean },
  ): Subscription;
  /** Resolves with the offset (undefined for a topic without history). */
  publish(topic: string, payload: Json): Promise<number | undefined>;
  on(event: 'connect', fn: () => void): this;
  on(event: 'disconnect', fn: (ev: DisconnectEvent) => void): this;
  on(event: 'error', fn: (err: Error | TidingsError) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
  /** Stops for good: pending and queued publishes are rejected with code "closed". */
  close(): void;
}

export default Tidings;
