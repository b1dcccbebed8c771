// Helpers the browser scripts share: settings from the environment,
// checks that say what they checked, the "browser ready" handshake with
// the Rust test, and screenshots into GITFLEET_ARTIFACTS.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

export function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

// Say the browser is up, then take the base URL from the first line on stdin.
export async function readyThenUrl() {
  console.log("browser ready");
  let text = "";
  for await (const chunk of process.stdin) {
    text += chunk;
    if (text.includes("\n")) break;
  }
  const line = text.split("\n")[0].trim();
  if (!line) throw new Error("no base URL on stdin");
  return line;
}

export async function shot(page, name) {
  const artifacts = need("GITFLEET_ARTIFACTS");
  mkdirSync(artifacts, { recursive: true });
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}
