/**
 * TypeScript client for the Email Service API.
 *
 * `schema.ts` is generated from openapi/openapi.yaml by `make sdk` (openapi-typescript);
 * this file is the only hand-written part: a typed openapi-fetch client with the caller's
 * JWT, and short names for the schemas callers use most.
 */
import createClient, { type Client, type ClientOptions } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, operations, paths } from "./schema.js";
export {
  DEFAULT_TOLERANCE_SECONDS,
  type VerifyOptions,
  WebhookVerificationError,
  verifyWebhook,
} from "./webhooks.js";

type Schemas = components["schemas"];
export type Account = Schemas["AccountResponse"];
export type AccountList = Schemas["AccountListResponse"];
export type CreateAccountRequest = Schemas["CreateAccountRequest"];
export type UpdateAccountRequest = Schemas["UpdateAccountRequest"];
export type Folder = Schemas["Folder"];
export type Message = Schemas["Message"];
export type MessageDetail = Schemas["MessageDetail"];
export type ErrorResponse = Schemas["ErrorResponse"];
export type Webhook = Schemas["Webhook"];
export type WebhookWithSecret = Schemas["WebhookWithSecret"];

export type EmailServiceClient = Client<paths>;

export interface EmailServiceClientOptions extends Omit<ClientOptions, "headers"> {
  /** Where the service answers, e.g. `http://localhost:5000`. */
  baseUrl: string;
  /** An HS256 JWT carrying `tenantId` and `userId`, sent as `Authorization: Bearer`. */
  token: string;
}

/** A client whose every path, parameter, body and response is typed from the contract. */
export function createEmailServiceClient(options: EmailServiceClientOptions): EmailServiceClient {
  const { token, ...rest } = options;
  return createClient<paths>({ ...rest, headers: { Authorization: `Bearer ${token}` } });
}
