// Maps zod failures of the route validators (params, query, JSON body) into the one error envelope.
import { ApiError } from '../errors';

interface Issue {
  path: PropertyKey[];
  message: string;
}

export const validationHook = (result: { success: true } | { success: false; error: { issues: readonly Issue[] } }) => {
  if (!result.success) {
    throw new ApiError(400, 'invalid_request', 'the request does not match the expected shape', {
      issues: result.error.issues.slice(0, 10).map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
    });
  }
};
