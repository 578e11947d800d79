// Opens the page: loads extensions/prip/prip.js into the fake front end (scripts/), runs
// setup(), then applies the user's setting changes. Reads a scenario as JSON from argv:
// {"server": bool, "saved": bool | null, "changes": [bool, ...]}; prints what happened.
import { app, stored, toasts } from "./scripts/app.js";
import { calls, server } from "./scripts/api.js";

const SETTING = "PRIP.AutoRefine";
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
const scenario = JSON.parse(process.argv[2]);
server.enabled = scenario.server;
if (scenario.saved !== null) stored[SETTING] = scenario.saved;

await import("./extensions/prip/prip.js");
await app.setupExtensions();
await settle();
const loaded = { calls: [...calls], setting: app.extensionManager.setting.get(SETTING), server: server.enabled };
const changes = [];
for (const value of scenario.changes) {
  const before = calls.length;
  await app.extensionManager.setting.set(SETTING, value);
  await settle();
  changes.push({ calls: calls.slice(before), setting: app.extensionManager.setting.get(SETTING), server: server.enabled });
}
console.log(JSON.stringify({ loaded, changes, toasts }));
