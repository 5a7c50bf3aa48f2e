// Verifying the webhooks Tenlyr sends (platform events and forwarded
// provider webhooks), both schemes it signs every request with:
//
// - `Tenlyr-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 keyed
//   with the whole `whsec_…` secret string over `"<t>.<raw body>"` (during a
//   secret rotation one `v1` per secret: any may match);
// - Standard Webhooks: `webhook-id`, `webhook-timestamp`,
//   `webhook-signature: v1,<base64> …`, HMAC-SHA256 keyed with the base64
//   bytes after `whsec_` over `"<id>.<timestamp>.<raw body>"`.
//
// Web Crypto only (Node ≥ 18, Deno, Bun, edge runtimes), so these are async.
// Pass the raw body exactly as received, before any JSON parsing.

const encoder = new TextEncoder();

async function subtle(): Promise<SubtleCrypto> {
  const global = (globalThis as { crypto?: Crypto }).crypto;
  if (global?.subtle) return global.subtle;
  // Node 18 without the global: its webcrypto (a variable name keeps
  // bundlers for other runtimes from resolving it).
  const name = "node:crypto";
  const nodeCrypto = (await import(name)) as { webcrypto: Crypto };
  return nodeCrypto.webcrypto.subtle;
}

async function hmac(key: Uint8Array<ArrayBuffer>, message: string): Promise<Uint8Array> {
  const s = await subtle();
  const k = await s.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await s.sign("HMAC", k, encoder.encode(message)));
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** Compares two strings in time that depends only on their length. */
function same(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

function fresh(timestamp: number, toleranceSec: number, nowSec: number): boolean {
  return Number.isFinite(timestamp) && Math.abs(nowSec - timestamp) <= toleranceSec;
}

export interface VerifyOptions {
  /** Seconds the signed timestamp may be from now (default 300). */
  toleranceSec?: number;
  /** Now, in Unix seconds (tests). */
  now?: number;
}

/** Verifies a `Tenlyr-Signature` header over the raw body. */
export async function verifySignature(
  payload: string,
  header: string,
  secret: string,
  { toleranceSec = 300, now = Date.now() / 1000 }: VerifyOptions = {},
): Promise<boolean> {
  let t: string | undefined;
  const signatures: string[] = [];
  for (const part of header.split(",")) {
    const [k, v] = part.trim().split("=", 2);
    if (k === "t") t = v;
    else if (k === "v1" && v) signatures.push(v);
  }
  if (t === undefined || !fresh(Number(t), toleranceSec, now)) return false;
  const expected = toHex(await hmac(encoder.encode(secret), `${t}.${payload}`));
  return signatures.some((s) => same(s, expected));
}

/** Verifies the Standard Webhooks headers over the raw body. */
export async function verifyStandardWebhook(
  payload: string,
  headers: Record<string, string | undefined> | Headers,
  secret: string,
  { toleranceSec = 300, now = Date.now() / 1000 }: VerifyOptions = {},
): Promise<boolean> {
  const get = (name: string) =>
    headers instanceof Headers ? (headers.get(name) ?? undefined) : headers[name];
  const id = get("webhook-id");
  const timestamp = get("webhook-timestamp");
  const signature = get("webhook-signature");
  if (!id || !timestamp || !signature || !fresh(Number(timestamp), toleranceSec, now)) return false;
  let key: Uint8Array<ArrayBuffer>;
  try {
    key = fromBase64(secret.startsWith("whsec_") ? secret.slice(6) : secret);
  } catch {
    return false;
  }
  const expected = toBase64(await hmac(key, `${id}.${timestamp}.${payload}`));
  return signature
    .split(" ")
    .map((s) => s.split(",", 2))
    .some(([version, sig]) => version === "v1" && sig !== undefined && same(sig, expected));
}
