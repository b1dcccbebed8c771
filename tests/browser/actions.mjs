// Signs in to a running `gitfleet serve` through the fake GitHub's OAuth
// flow and uses the rollout page's buttons; started by
// tests/tests/browser_e2e.rs, which passes:
//
//   GITFLEET_URL        the server's base URL, or "-": launch the browser,
//                       print "browser ready" and read it from stdin
//   GITFLEET_CHROMIUM   the browser binary (Debian's /usr/bin/chromium)
//   GITFLEET_ARTIFACTS  where screenshots go
//   GITFLEET_ROLLOUT    the rollout to pause
//   GITFLEET_VIEWER     a login fleet.kdl makes a viewer
//   GITFLEET_OPERATOR   a login fleet.kdl makes an operator
//   GITFLEET_APPROVE    `rollout:environment` awaiting approval, which the
//                       operator approves (a review on GitHub as them)
//
// Prints "commit <sha>" for the commit the pause button made. Exits
// non-zero with a message on the first check that fails.

import { chromium } from "playwright-core";
import { check, need, readyThenUrl, shot } from "./common.mjs";

const rollout = need("GITFLEET_ROLLOUT");
const viewer = need("GITFLEET_VIEWER");
const operator = need("GITFLEET_OPERATOR");
const [approveRollout, approveEnv] = need("GITFLEET_APPROVE").split(":");

const browser = await chromium.launch({
  executablePath: need("GITFLEET_CHROMIUM"),
  args: ["--no-sandbox"],
});
try {
  let url = need("GITFLEET_URL");
  if (url === "-") url = await readyThenUrl();
  const page_path = `/rollouts/${rollout}`;
  const action = (name) => `${url}${page_path}/${name}`;

  // Nobody signed in: the pages send the browser to sign in.
  const anon = await browser.newContext();
  const a = await anon.newPage();
  const first = await a.request.get(url + page_path, { maxRedirects: 0 });
  check(first.status() === 303, `a page without a session redirects to sign-in (${first.status()})`);
  check((first.headers()["location"] || "").startsWith("/auth/login"), "to /auth/login");
  await anon.close();

  // A viewer signs in (GitHub's `login` hint picks the account) and sees
  // the rollout, with no buttons.
  const asViewer = await browser.newContext();
  const v = await asViewer.newPage();
  await v.goto(`${url}/auth/login?login=${viewer}&next=${encodeURIComponent(page_path)}`);
  check(new URL(v.url()).pathname === page_path, `signed in, back on ${page_path} (${v.url()})`);
  check((await v.textContent("[data-login]")) === viewer, `the page says ${viewer} is signed in`);
  check((await v.$$("button[data-action]")).length === 0, "a viewer sees no buttons");
  await shot(v, "viewer");
  // A forged POST: the viewer's own session and CSRF token, this origin,
  // still refused for the role.
  const viewerCsrf = await v.inputValue("form[action='/auth/logout'] input[name=csrf]");
  const forged = await v.request.post(action("pause"), {
    form: { csrf: viewerCsrf },
    headers: { Origin: url },
  });
  check(forged.status() === 403, `a viewer's POST is refused (${forged.status()})`);
  check((await forged.text()).includes("may look, not act"), "because they are no operator");
  await asViewer.close();

  // An operator signs in and gets the buttons.
  const asOperator = await browser.newContext();
  const o = await asOperator.newPage();
  await o.goto(`${url}/auth/login?login=${operator}&next=${encodeURIComponent(page_path)}`);
  check((await o.textContent("[data-login]")) === operator, `the page says ${operator} is signed in`);
  check((await o.$$("button[data-action=pause]")).length === 1, "an operator sees a pause button");
  // A write without the session's CSRF token, or from another origin, is
  // refused even for an operator.
  const noToken = await o.request.post(action("pause"), { form: {}, headers: { Origin: url } });
  check(noToken.status() === 403, `a POST without a CSRF token is refused (${noToken.status()})`);
  const csrf = await o.inputValue("form[action='/auth/logout'] input[name=csrf]");
  const elsewhere = await o.request.post(action("pause"), {
    form: { csrf },
    headers: { Origin: "http://evil.example" },
  });
  check(elsewhere.status() === 403, `a POST from another origin is refused (${elsewhere.status()})`);

  // Pause: a commit as the operator, said on the page.
  await Promise.all([o.waitForNavigation(), o.click("button[data-action=pause]")]);
  const done = await o.textContent("[data-done]");
  const made = /pause committed as ([0-9a-f]{12}) by ([A-Za-z0-9-]+)/.exec(done || "");
  check(made && made[2] === operator, `the page shows the commit it made: ${done}`);
  console.log(`commit ${made[1]}`);
  await shot(o, "paused-committed");

  // The reconciler acts on it: the page shows the rollout paused.
  const deadline = Date.now() + 90_000;
  for (;;) {
    await o.goto(url + page_path);
    const phases = await o.$$eval(`tr[data-rollout='${rollout}'] td:nth-child(3)`, (tds) =>
      tds.map((td) => td.textContent.trim()),
    );
    if (phases.includes("paused")) {
      check(true, `the rollout shows paused (${phases.join(", ")})`);
      break;
    }
    if (Date.now() > deadline) throw new Error(`never paused: ${phases.join(", ")}`);
    await o.waitForTimeout(500);
  }
  await shot(o, "paused");

  // Approve: a review on GitHub in the operator's name releases the
  // change, as the pages then show.
  await o.goto(`${url}/rollouts/${approveRollout}`);
  const approve = `button[data-action=approve]`;
  check((await o.$$(approve)).length === 1, `an approve button for ${approveEnv}`);
  await Promise.all([o.waitForNavigation(), o.click(approve)]);
  const approved = (await o.textContent("[data-done]")) || "";
  check(
    approved.includes(`${operator} approved pull request #`),
    `the page says the review was made: ${approved}`,
  );
  const until = Date.now() + 90_000;
  for (;;) {
    await o.goto(`${url}/rollouts/${approveRollout}`);
    const phase = await o.$eval(
      `tr[data-rollout='${approveRollout}'][data-env='${approveEnv}'] td:nth-child(3)`,
      (td) => td.textContent.trim(),
    );
    if (phase !== "awaiting-approval") {
      check(true, `${approveRollout} moved on in ${approveEnv} (${phase})`);
      break;
    }
    if (Date.now() > until) throw new Error(`still awaiting approval in ${approveEnv}`);
    await o.waitForTimeout(500);
  }
  await shot(o, "approved");
  await asOperator.close();
} finally {
  await browser.close();
}
