// The web UI driven in Debian's headless Chromium by playwright-core, as a person would use it:
// open /, click Deploy, fill the guide's form, submit, see the app running, scale it to 3 from
// the UI, create a volume, apply a policy, look at every page — with screenshots of each.
//
// Run inside the agent's network namespace (the API is on 127.0.0.1:3000 there):
//   BASE_URL=http://127.0.0.1:3000 IMAGE=127.0.0.1:5000/hivemind/test:1 ARTIFACTS=DIR node ui.mjs
// Prints one JSON line with what it saw; exits non-zero with the reason on failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const BASE = process.env.BASE_URL || "http://127.0.0.1:3000";
const IMAGE = process.env.IMAGE;
const ARTIFACTS = process.env.ARTIFACTS || "artifacts";
const APP = process.env.APP || "web-ui";
const TIMEOUT = 90_000;
if (!IMAGE) throw new Error("IMAGE is required");
mkdirSync(ARTIFACTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { screenshots: [] };
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  // Chromium aborts in-flight requests with ERR_NETWORK_CHANGED whenever an interface appears
  // in its namespace, and every container the test starts adds a veth to the node's namespace.
  // That is the browser reacting to the test host, not a UI error; the UI's next poll retries.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("net::ERR_NETWORK_CHANGED")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const shot = async (name) => {
    const path = join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    seen.screenshots.push(path);
  };

  // The home page: the apps list, empty.
  await page.goto(BASE);
  await page.getByRole("heading", { name: "Apps" }).waitFor();
  await page.getByText("No apps yet").waitFor();
  await shot("01-apps-empty");

  // The guide: click "Deploy" in the navigation bar, fill Name, Image, Service Domain.
  await page.locator("nav").getByRole("link", { name: "Deploy" }).click();
  await page.getByRole("heading", { name: "Deploy an application" }).waitFor();
  // Inline validation first: a bad name and image never reach the server.
  await page.getByLabel("Name", { exact: true }).fill("Bad Name");
  await page.getByLabel("Image", { exact: true }).fill("not an image");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.getByText("Use lowercase letters, digits and -").waitFor();
  await page.getByText("Use the format repository/image:tag").waitFor();
  await shot("02-deploy-invalid");
  await page.getByLabel("Name", { exact: true }).fill(APP);
  await page.getByLabel("Image", { exact: true }).fill(IMAGE);
  await page.getByLabel("Service Domain (optional)").fill("web-ui.example.com");
  await page.getByText("Environment, ports, volumes, labels, limits").click();
  await page.getByLabel("Environment").fill("MESSAGE=from-the-ui");
  await page.getByLabel("Labels").fill("tier=front");
  await shot("03-deploy-form");
  await page.getByRole("button", { name: "Deploy" }).click();

  // Success: the new app's page, its container running.
  await page.waitForURL(`**/#/apps/${APP}`);
  await page.getByRole("heading", { name: new RegExp(`${APP}\\s*running`) }).waitFor();
  await page.locator("tbody tr", { hasText: "running" }).first().waitFor();
  seen.deployed = await page.locator("tbody tr").count();
  await shot("04-app-running");

  // Scale to 3 from the UI and see three running containers (the page refreshes by itself).
  await page.getByLabel("Replicas").fill("3");
  await page.getByRole("button", { name: "Scale" }).click();
  await page.getByRole("heading", { name: "Containers (3)" }).waitFor();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("tbody tr")];
    return rows.length === 3 && rows.every((r) => r.textContent.includes("running"));
  }, null, { timeout: TIMEOUT });
  seen.scaled = await page.locator("tbody tr", { hasText: "running" }).count();
  await page.getByText("3 running of 3").waitFor();
  await shot("05-app-scaled");

  // Edit its settings: add an environment variable; what was not touched stays.
  await page.getByRole("link", { name: "Edit settings" }).click();
  await page.getByRole("heading", { name: `Edit ${APP}` }).waitFor();
  const envField = page.getByLabel("Environment");
  await envField.fill((await envField.inputValue()) + "\nEXTRA=from-the-edit");
  // ... and mount the secret the test made (its name only ever appears, never its value).
  if (process.env.SECRET) await page.getByLabel("Secrets").fill(process.env.SECRET);
  await shot("05b-app-edit");
  await page.getByRole("button", { name: "Save and roll out" }).click();
  await page.waitForURL(`**/#/apps/${APP}`);
  await page.getByText("EXTRA=from-the-edit").waitFor({ timeout: TIMEOUT });
  await page.getByText("MESSAGE=from-the-ui").waitFor();
  await page.getByText("tier=front").waitFor();
  if (process.env.SECRET) {
    await page.locator(".tag", { hasText: process.env.SECRET }).first().waitFor();
    seen.pageHasSecretValue = (await page.content()).includes(process.env.SECRET_VALUE);
  }
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("tbody tr")];
    return rows.length === 3 && rows.every((r) => r.textContent.includes("running"));
  }, null, { timeout: TIMEOUT });
  seen.edited = true;

  // A container: info, history, usage and the live log tail.
  await page.locator("tbody tr a.mono").first().click();
  await page.getByRole("heading", { name: "Status history" }).waitFor();
  await page.locator("#log").filter({ hasText: "hivemind test image" }).waitFor();
  await page.getByText("memory").first().waitFor();
  await shot("06-container");

  // Every container of every app.
  await page.locator("nav").getByRole("link", { name: "Containers" }).click();
  await page.getByRole("heading", { name: "Containers" }).waitFor();
  await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 3, null, { timeout: TIMEOUT });
  await shot("07-containers");

  // Volumes: create one.
  await page.locator("nav").getByRole("link", { name: "Volumes" }).click();
  await page.getByLabel("Volume name").fill("ui-data");
  await page.getByRole("button", { name: "Create volume" }).click();
  await page.getByRole("cell", { name: "ui-data", exact: true }).waitFor();
  await shot("08-volumes");

  // Policies: apply one, see it listed, view its YAML.
  await page.locator("nav").getByRole("link", { name: "Policies" }).click();
  await page.getByLabel("YAML", { exact: true }).fill(
    "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: web-from-lan }\nspec:\n  selector: { app: " + APP + " }\n  ingress:\n    - from: [ { cidr: 192.0.2.0/24 } ]\n      ports: [ { port: 80 } ]\n");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByRole("link", { name: "web-from-lan" }).waitFor();
  await shot("09-policies");
  await page.getByRole("link", { name: "web-from-lan" }).click();
  await page.locator("pre.yaml").filter({ hasText: "192.0.2.0/24" }).waitFor();
  await shot("10-policy");

  // Health: nodes, tunnels, programs, runtime.
  await page.locator("nav").getByRole("link", { name: "Health" }).click();
  await page.getByRole("heading", { name: "eBPF programs" }).waitFor();
  await page.locator("td", { hasText: "hm_from_container" }).waitFor();
  await shot("11-health");

  // The apps list, then the same at a phone's width.
  await page.locator("nav").getByRole("link", { name: "Apps" }).click();
  await page.getByRole("link", { name: APP }).waitFor();
  await page.getByText("3/3").waitFor();
  await shot("12-apps");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("button", { name: "Menu" }).click();
  await page.locator("nav").getByRole("link", { name: "Containers" }).waitFor();
  await shot("13-phone-menu");
  await page.locator("nav").getByRole("link", { name: "Apps" }).click();
  await shot("14-phone-apps");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  seen.phoneOverflow = overflow;
  if (overflow > 0) throw new Error(`the page is ${overflow}px wider than a phone`);

  // Remove the app with the confirmation dialog.
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.getByRole("link", { name: APP }).click();
  await page.getByRole("button", { name: "Remove" }).click();
  await page.getByRole("dialog").getByText(`Remove app ${APP}?`).waitFor();
  await shot("15-remove-confirm");
  await page.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
  seen.removeCancelled = true;

  seen.consoleErrors = consoleErrors;
  if (consoleErrors.length) throw new Error(`console errors: ${consoleErrors.join("; ")}`);
  console.log(JSON.stringify(seen));
} catch (err) {
  const pages = browser.contexts().flatMap((c) => c.pages());
  if (pages[0]) await pages[0].screenshot({ path: join(ARTIFACTS, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`UI test failed: ${err.stack || err}\nconsole errors: ${consoleErrors.join("; ")}`);
  process.exitCode = 1;
} finally {
  // playwright made (and now removes) a fresh, empty profile for this browser.
  await browser.close();
}
