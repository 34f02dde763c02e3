// The HTTPS accounts API: register, login, refresh, and the profile (GET/PUT /me).
// Every failure is thrown as an ApiError carrying the server's error code.

/** A refused or failed API call. `code` is the server's code, or "network". */
export class ApiError extends Error {
  constructor(code, message, status = 0, retryAfter = null) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    /** Seconds from the Retry-After header of a 429, if any. */
    this.retryAfter = retryAfter;
  }
}

/**
 * A token response of /login or /refresh as the client keeps it: the token, when it
 * expires on this machine's clock, and the user.
 */
export function sessionFromTokenResponse(body, now = Date.now()) {
  return {
    token: body.token,
    expiresAt: now + Number(body.expires_in) * 1000,
    user: body.user,
  };
}

/** Calls the API at `base` (the page's own origin by default). */
export class Api {
  constructor({ base = '', fetchImpl = (...args) => fetch(...args) } = {}) {
    this.base = base;
    this.fetch = fetchImpl;
  }

  async call(method, path, { body, token } = {}) {
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    let res;
    try {
      res = await this.fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch {
      throw new ApiError('network', 'cannot reach the server');
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const retry = res.headers.get('retry-after');
      throw new ApiError(
        (data && data.error) || `http_${res.status}`,
        (data && data.message) || res.statusText,
        res.status,
        retry === null ? null : Number(retry),
      );
    }
    return data;
  }

  register(username, password) {
    return this.call('POST', '/register', { body: { username, password } });
  }

  async login(username, password) {
    return sessionFromTokenResponse(await this.call('POST', '/login', { body: { username, password } }));
  }

  async refresh(token) {
    return sessionFromTokenResponse(await this.call('POST', '/refresh', { token }));
  }

  me(token) {
    return this.call('GET', '/me', { token });
  }

  /** `change`: any of display_name, current_password + new_password. */
  updateMe(token, change) {
    return this.call('PUT', '/me', { token, body: change });
  }
}

/** Whether an API error means the token is no longer any good. */
export function isAuthError(err) {
  return err instanceof ApiError && (err.status === 401 || err.code === 'unauthorized' || err.code === 'token_expired');
}
