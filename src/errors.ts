// One error envelope: thrown anywhere, rendered by app.onError as JSON with a stable `code`.
import type { ContentfulStatusCode } from 'hono/utils/http-status';

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toJSON() {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

export const badRequest = (code: string, message: string, details?: Record<string, unknown>) =>
  new ApiError(400, code, message, details);

/** A request path as logs may show it: a token in the path (Traccar Client on iOS) is left out. */
export function loggedPath(path: string): string {
  return path.replace(/^(\/ingest\/traccar\/)[^/]+/, '$1<token>');
}
