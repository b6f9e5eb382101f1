/**
 * Checks recorded deliveries with the SDK's verifyWebhook (tests/webhooks drives it).
 *
 * Usage: node dist/scripts/verify-webhook.js FILE
 * FILE holds `[{secret, headers, body}]` (body as text); prints one JSON line per
 * delivery: `{"ok": true, "id": <the change id>}` or `{"ok": false, "error": "..."}`.
 */
import { readFileSync } from "node:fs";

import { verifyWebhook } from "../src/webhooks.js";

interface Recorded {
  secret: string;
  headers: Record<string, string>;
  body: string;
}

const file = process.argv[2];
if (!file) {
  console.error("usage: verify-webhook FILE");
  process.exit(2);
}
const recorded = JSON.parse(readFileSync(file, "utf8")) as Recorded[];
for (const delivery of recorded) {
  try {
    const change = verifyWebhook(delivery.secret, delivery.headers, delivery.body) as {
      id?: unknown;
    };
    console.log(JSON.stringify({ ok: true, id: change.id }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: (error as Error).message }));
  }
}
