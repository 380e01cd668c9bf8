// The page of `backflow serve` in a real browser (Debian's chromium through playwright-core):
// the token form, the overview, a sync's page with "Run now" and "Full resync", the samples of a
// run, and an entity's golden record. Usage: node page.cjs URL TOKEN SCREENSHOT_DIR
// Prints one JSON line of what it saw; exits 1 (with the reason) when something is missing.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, token, shots] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.BACKFLOW_TEST_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const seen = {};
  const problems = [];
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(30000);
    page.on("pageerror", (e) => problems.push(`page error: ${e}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().includes("401")) problems.push(`console: ${m.text()}`);
    });
    await page.goto(url);

    // The token: a wrong one is refused, the right one opens the overview.
    await page.fill("input[name=token]", "not-the-token");
    await page.click("form#token button");
    await page.waitForSelector("text=That token was refused.");
    await page.fill("input[name=token]", token);
    await page.click("form#token button");
    await page.waitForSelector("#targets tr[data-name=people]");
    seen.overview = (await page.$$eval("#targets tbody tr", (rs) => rs.map((r) => r.dataset.name))).sort();

    // A sync's page: Run now, and the new run appears with its counts.
    await page.click("#targets tr[data-name=people] a");
    await page.waitForSelector("#run-now:not([disabled])");
    const newRun = async (button, confirm) => {
      const before = await page.$$eval("#runs tr.run", (rs) => rs.map((r) => r.dataset.run)).catch(() => []);
      if (confirm) page.once("dialog", (d) => d.accept());
      await page.click(button);
      const handle = await page.waitForFunction(
        (prev) => {
          const row = [...document.querySelectorAll("#runs tr.run")].find(
            (r) => !prev.includes(r.dataset.run) && !["queued", "running"].includes(r.dataset.status),
          );
          return row && { run: row.dataset.run, status: row.dataset.status, cells: [...row.cells].map((c) => c.textContent) };
        },
        before,
        { timeout: 60000 },
      );
      return handle.jsonValue();
    };
    const first = await newRun("#run-now", false);
    seen.run_now = first;
    await page.screenshot({ path: `${shots}/sync.png`, fullPage: true });

    // Its samples: the invalid row with its reason.
    await page.click(`#runs tr[data-run="${first.run}"]`);
    await page.waitForSelector("#samples tbody tr");
    seen.samples = await page.$$eval("#samples tbody tr", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));

    // Full resync, after a confirmation.
    await page.reload();
    await page.waitForSelector("#full-resync:not([disabled])");
    seen.full_resync = await newRun("#full-resync", true);

    // An entity: run it, then find a golden record by a source's id.
    await page.goto(`${url}/#/entity/account`);
    await page.waitForSelector("#run-now:not([disabled])");
    seen.entity_run = await newRun("#run-now", false);
    await page.fill("input[name=source]", "crm");
    await page.fill("input[name=id]", "1");
    await page.click("text=by source id");
    await page.waitForSelector("#golden-fields tbody tr");
    seen.golden = await page.$$eval("#golden-fields tbody tr", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
    await page.screenshot({ path: `${shots}/entity.png`, fullPage: true });
    await page.goto(`${url}/#/`);
    await page.waitForSelector("#targets tr[data-name=people] svg rect");
    await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });
  } catch (e) {
    problems.push(String(e && e.stack ? e.stack : e));
  } finally {
    await browser.close();
  }
  seen.problems = problems;
  console.log(JSON.stringify(seen));
  process.exit(problems.length ? 1 : 0);
}

main();
