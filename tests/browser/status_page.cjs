// The status page as a person sees it, in Debian's Chromium driven by playwright-core.
// Started by tests/browser/main.rs, which runs the simulator and the sidecar, writes a build's
// results (confirmed, one refused for an archived test case, one unconfirmed) and passes:
//   PLAYWRIGHT_CORE  path to the installed playwright-core package
//   CHROMIUM         the browser executable
//   ADMIN_URL        the sidecar's admin listener (the page)
//   PROXY_URL        the sidecar's proxy listener (to make a new write while the page is open)
//   BUILD            the build the results were written under
//   SCREENSHOTS      the directory the screenshots go into (docs/img)
// Prints one "ok - ..." line per check and exits non-zero at the first failure.

'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const ADMIN = env('ADMIN_URL');
const PROXY = env('PROXY_URL');
const BUILD = env('BUILD');
const SHOTS = env('SCREENSHOTS');

function check(cond, what, detail) {
  if (!cond) throw new Error(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  console.log(`ok - ${what}`);
}

// The text of each cell of the build's row, by its column's label.
async function buildRow(page, build) {
  return page.evaluate((b) => {
    for (const tr of document.querySelectorAll('#builds tbody tr')) {
      const cells = {};
      for (const td of tr.querySelectorAll('td')) cells[td.dataset.label] = td.innerText.trim();
      if (cells.Build === b) return cells;
    }
    return null;
  }, build);
}

async function newWrite() {
  const r = await fetch(`${PROXY}/slm/webservice/v2.0/testcaseresult/create`, {
    method: 'POST',
    headers: { zsessionid: '_sim_alice_key', 'content-type': 'application/json' },
    body: JSON.stringify({ TestCaseResult: { TestCase: '/testcase/1007', Verdict: 'Pass' } }),
  });
  return r.headers.get('x-rally-sidecar-confirmed');
}

async function main() {
  // launch() gives Chromium a fresh temporary profile (--user-data-dir) of its own each time.
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const desk = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
    const page = await desk.newPage();
    const blocked = [];
    page.on('console', (m) => { if (m.type() === 'error') blocked.push(m.text()); });
    let navigations = 0;
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
    await page.goto(`${ADMIN}/`);

    const row = await buildRow(page, BUILD);
    check(row !== null, `the build ${BUILD} has a row`);
    check(row.Verdict === 'refused', 'its verdict reads "refused"', row);
    check(
      [row.Written, row.Confirmed, row.Refused, row.Unconfirmed, row.Pending].join(' ') === '5 3 1 1 0',
      'its counts read written 5, confirmed 3, refused 1, unconfirmed 1, pending 0', row,
    );
    check((await buildRow(page, 'nightly-117')) !== null, 'the older build is listed too');
    const order = await page.$$eval('#builds tbody tr td[data-label="Build"]', (tds) => tds.map((t) => t.innerText));
    check(order[0] === BUILD, 'the newest build comes first', order);

    const refused = page.locator('#attention tr.refused');
    check((await refused.count()) === 1, 'one refused write needs attention');
    const refusedText = await refused.innerText();
    check(/TC90/.test(refusedText) && /archived/.test(refusedText), 'it names TC90 and says it is archived', refusedText);
    const unconfirmed = page.locator('#attention tr.unconfirmed');
    check((await unconfirmed.count()) === 1, 'one unconfirmed write is highlighted');
    const bg = await unconfirmed.evaluate((e) => getComputedStyle(e).backgroundColor);
    check(bg !== 'rgba(0, 0, 0, 0)' && bg !== 'rgb(255, 255, 255)', 'the unconfirmed row has a background of its own', bg);
    const context = await page.locator('#context').innerText();
    check(context.includes(`Writes without a Build get ${BUILD}, from config context.build.`), 'the build context names its source', context);
    check((await page.locator('#latency rect').count()) >= 4, 'the latency chart has a bar per settled write');

    fs.mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'status-page.png'), fullPage: true });

    // Live: a new write shows up without a reload.
    await page.evaluate(() => { window.__samePage = true; });
    check((await newWrite()) === 'true', 'a new write through the sidecar is confirmed');
    await page.waitForFunction(
      (b) => [...document.querySelectorAll('#builds tbody tr')].some(
        (tr) => tr.querySelector('td[data-label="Build"]').innerText.trim() === b
          && tr.querySelector('td[data-label="Written"]').innerText.trim() === '6'),
      BUILD, { timeout: 20000 },
    );
    check(true, 'the page shows 6 written for the build after the new write');
    check(await page.evaluate(() => window.__samePage === true) && navigations === 1, 'without reloading the page', { navigations });
    const live = await page.locator('#live').innerText();
    check(/^live · updated /.test(live), 'the page says it is live', live);
    check(blocked.length === 0, 'no console errors (nothing blocked by the content security policy)', blocked);

    // A phone: tables become cards; nothing wider than the screen.
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, colorScheme: 'light',
    });
    const small = await phone.newPage();
    await small.goto(`${ADMIN}/`);
    const headHidden = await small.$eval('#builds thead', (e) => getComputedStyle(e).display === 'none');
    check(headHidden, 'on a phone the builds table turns into cards');
    const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, 'on a phone nothing is wider than the screen', overflow);
    const card = await buildRow(small, BUILD);
    check(card !== null && card.Refused === '1', 'on a phone the counts are still there', card);
    await small.screenshot({ path: path.join(SHOTS, 'status-page-phone.png'), fullPage: false });
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => { console.log(`not ok - ${e.message}`); process.exit(1); },
);
