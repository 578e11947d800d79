// Fake of ComfyUI's front end scripts/api.js: fetchApi answers the package's routes as
// server_hooks.py does, from `server` below, and records every call.
export const server = { enabled: false };
export const calls = [];

const answer = (data, status = 200) => new Response(JSON.stringify(data), { status, headers: { "Content-Type": "application/json" } });

export const api = {
  addEventListener() {},
  async fetchApi(route, options = {}) {
    const method = options.method ?? "GET";
    const body = options.body === undefined ? undefined : JSON.parse(options.body);
    calls.push({ method, route, body });
    if (route !== "/prip/auto") return answer({ error: "not found" }, 404);
    if (method === "POST") {
      if (typeof body?.enabled !== "boolean") return answer({ error: "bad enabled" }, 400);
      server.enabled = body.enabled;
    }
    return answer({ ...server });
  },
};
