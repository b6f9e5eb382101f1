/**
 * Checking that a webhook delivery comes from the Email Service (Standard Webhooks).
 *
 * ```ts
 * const change = verifyWebhook(secret, request.headers, rawBody); // throws WebhookVerificationError
 * ```
 *
 * `rawBody` must be the bytes (or text) received, before any JSON parsing. During a secret
 * rotation a delivery carries several signatures: one matching `secret` is enough.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

import type { components } from "./schema.js";

/** How far `webhook-timestamp` may be from now, either way (the spec's five minutes). */
export const DEFAULT_TOLERANCE_SECONDS = 300;

export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}

type HeaderSource =
  | Headers
  | Record<string, string | string[] | undefined>
  | Iterable<[string, string]>;

export interface VerifyOptions {
  toleranceSeconds?: number;
  /** Seconds since the epoch; the clock by default. */
  now?: number;
}

function header(headers: HeaderSource, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") {
    return (headers as Headers).get(name) ?? undefined;
  }
  const entries: Iterable<[string, unknown]> =
    Symbol.iterator in (headers as object)
      ? (headers as Iterable<[string, string]>)
      : Object.entries(headers as Record<string, unknown>);
  for (const [key, value] of entries) {
    if (key.toLowerCase() === name) {
      return Array.isArray(value) ? String(value[0]) : value === undefined ? undefined : String(value);
    }
  }
  return undefined;
}

function secretKey(secret: string): Buffer {
  const encoded = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) {
    throw new Error("a webhook secret is 'whsec_' followed by base64");
  }
  return Buffer.from(encoded, "base64");
}

/** Check a delivery's signature and timestamp; returns the Change it carries. */
export function verifyWebhook(
  secret: string,
  headers: HeaderSource,
  body: string | Uint8Array,
  options: VerifyOptions = {},
): components["schemas"] extends { Change: infer C } ? C : unknown {
  const raw = typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body);
  const id = header(headers, "webhook-id");
  const stamp = header(headers, "webhook-timestamp");
  const offered = header(headers, "webhook-signature");
  if (!id || !stamp || !offered) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  }
  if (!/^\d+$/.test(stamp)) {
    throw new WebhookVerificationError("webhook-timestamp is not a number");
  }
  const timestamp = Number(stamp);
  const now = options.now ?? Date.now() / 1000;
  if (Math.abs(now - timestamp) > (options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS)) {
    throw new WebhookVerificationError("webhook-timestamp is too far from now");
  }
  const expected = createHmac("sha256", secretKey(secret))
    .update(`${id}.${timestamp}.`)
    .update(raw)
    .digest();
  for (const candidate of offered.split(" ")) {
    const [version, signature] = candidate.split(",", 2);
    if (version !== "v1" || signature === undefined) continue;
    const given = Buffer.from(signature, "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) {
      try {
        return JSON.parse(raw.toString("utf8"));
      } catch {
        throw new WebhookVerificationError("the body is not JSON");
      }
    }
  }
  throw new WebhookVerificationError("no signature matches the secret");
}
