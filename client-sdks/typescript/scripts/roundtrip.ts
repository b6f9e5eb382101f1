/**
 * The account round trip through the generated TypeScript client, against a live server:
 * create, refuse a duplicate (409), list, fetch, update, read folders, miss a folder (404),
 * delete, and miss the deleted account (404).
 *
 * Usage: node dist/scripts/roundtrip.js BASE_URL TOKEN
 * Prints one JSON line with what it saw; exits non-zero on the first surprise.
 */
import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";

import {
  type Account,
  type CreateAccountRequest,
  type ErrorResponse,
  createEmailServiceClient,
} from "../src/index.js";

function expectError(
  what: string,
  result: { error?: ErrorResponse | undefined; response: Response },
  status: number,
  code: string,
): void {
  assert.equal(result.response.status, status, `${what}: HTTP status`);
  assert.ok(result.error, `${what}: an ErrorResponse body`);
  assert.equal(result.error.code, code, `${what}: error code`);
  assert.equal(typeof result.error.message, "string", `${what}: error message`);
}

async function main(baseUrl: string, token: string): Promise<void> {
  const client = createEmailServiceClient({ baseUrl, token });
  const request: CreateAccountRequest = {
    accountName: "TypeScript SDK",
    emailAddress: `ts-${randomUUID().slice(0, 8)}@example.test`,
    protocol: "imap",
    hostname: "127.0.0.1",
    port: 993,
    encryption: "tls",
    username: "ts-user",
    password: "ts-client-password",
  };

  const created = await client.POST("/api/accounts", { body: request });
  assert.equal(created.response.status, 201, "create: HTTP status");
  const account: Account | undefined = created.data;
  assert.ok(account, "create: an AccountResponse body");
  assert.equal(account.emailAddress, request.emailAddress);
  assert.equal(account.hostname, "127.0.0.1");
  assert.equal(account.encryption, "tls");
  assert.equal(account.username, "ts-user");
  assert.equal(account.lastSyncAt, null);
  assert.ok(!("password" in account), "the password never comes back");

  const duplicate = await client.POST("/api/accounts", { body: request });
  expectError("duplicate", duplicate, 409, "EMAIL_DUPLICATE");

  const listed = await client.GET("/api/accounts", { params: { query: { limit: 10 } } });
  assert.equal(listed.response.status, 200, "list: HTTP status");
  assert.ok(listed.data, "list: an AccountListResponse body");
  assert.deepEqual(
    listed.data.accounts.map((item) => item.id),
    [account.id],
  );
  assert.equal(listed.data.pagination.total, 1);
  assert.equal(listed.data.pagination.limit, 10);

  const path = { params: { path: { accountId: account.id } } };
  const fetched = await client.GET("/api/accounts/{accountId}", path);
  assert.equal(fetched.response.status, 200, "get: HTTP status");
  assert.deepEqual(fetched.data, account);

  const updated = await client.PUT("/api/accounts/{accountId}", {
    ...path,
    body: { accountName: "TypeScript SDK, renamed", syncInterval: 600 },
  });
  assert.equal(updated.response.status, 200, "update: HTTP status");
  assert.ok(updated.data, "update: an AccountResponse body");
  assert.equal(updated.data.accountName, "TypeScript SDK, renamed");
  assert.equal(updated.data.syncInterval, 600);
  assert.equal(updated.data.emailAddress, request.emailAddress);

  const folders = await client.GET("/api/{accountId}/folders", path);
  assert.equal(folders.response.status, 200, "folders: HTTP status");
  assert.deepEqual(folders.data, { folders: [], total: 0 });

  const missingFolder = await client.GET("/api/{accountId}/folders/{folderId}/messages", {
    params: { path: { accountId: account.id, folderId: randomUUID() } },
  });
  expectError("messages of a missing folder", missingFolder, 404, "FOLDER_NOT_FOUND");

  const deleted = await client.DELETE("/api/accounts/{accountId}", path);
  assert.equal(deleted.response.status, 204, "delete: HTTP status");

  const gone = await client.GET("/api/accounts/{accountId}", path);
  expectError("get after delete", gone, 404, "ACCOUNT_NOT_FOUND");

  console.log(
    JSON.stringify({ accountId: account.id, emailAddress: account.emailAddress, ok: true }),
  );
}

const [baseUrl, token] = process.argv.slice(2);
if (!baseUrl || !token) {
  console.error("usage: node dist/scripts/roundtrip.js BASE_URL TOKEN");
  process.exit(2);
}
main(baseUrl, token).catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
