// Drives nimbus-git's pages in headless Chromium (playwright-core, Debian's chromium).
// Usage: node pages.cjs BASE_URL OUT_DIR COMMIT_ID   (NODE_PATH = the npm peers' node_modules)
//
// 1. With JavaScript disabled (as the UI is meant to work): content of the repository list,
//    README, tree, blob, blame, history and commit pages; line anchors; phone width without
//    page-wide horizontal scrolling; dark mode.
// 2. With JavaScript enabled, only to prove hostile Markdown stays inert (nothing it holds may
//    run) and to run axe-core: no serious or critical violations.
// On a failed check a screenshot of the page is saved in OUT_DIR and the script exits 1.
'use strict';
const path = require('path');
const { chromium } = require('playwright-core');

const [base, outDir, commitId] = process.argv.slice(2);
const failures = [];

const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
];

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function visit(context, name, url, fn) {
  const page = await context.newPage();
  try {
    const response = await page.goto(base + url, { waitUntil: 'load' });
    check(response && response.status() === 200, `${url}: status ${response && response.status()}`);
    await fn(page);
    console.log(`ok   ${name}`);
  } catch (err) {
    const shot = path.join(outDir, `${name.replace(/[^a-z0-9]+/gi, '-')}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    failures.push(`${name}: ${err.message} (screenshot ${shot})`);
    console.log(`FAIL ${name}: ${err.message}`);
  } finally {
    await page.close();
  }
}

const text = (page, selector) => page.locator(selector).first().innerText();

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // playwright gives every launch a fresh temporary profile (the --user-data-dir the notes ask for).
    args: FLAGS,
  });
  const noJs = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1200, height: 900 } });

  await visit(noJs, 'repository list', '/', async (page) => {
    check(await page.locator('a[href="/site"]').count() === 1, 'link to the repository');
  });
  await visit(noJs, 'README', '/site', async (page) => {
    check((await text(page, '.markdown h1')).includes('Site'), 'README heading rendered');
    check(await page.locator('.markdown table td').count() === 2, 'table rendered');
    check(await page.locator('.markdown input[type=checkbox][disabled]').count() === 1, 'task list box');
    check(await page.locator('.markdown script, .markdown iframe, [onerror], [onclick]').count() === 0, 'nothing active');
    const logo = page.locator('.markdown img[alt=logo]');
    check(await logo.evaluate((img) => img.complete && img.naturalWidth > 0).catch(() => null) !== false, 'logo loads');
    check(await page.locator('table.files').innerText().then((t) => t.includes('second: main says hello')), 'last-commit column');
  });
  await visit(noJs, 'tree', '/site/tree/main/src', async (page) => {
    const row = await text(page, 'table.files tbody tr:has(a:text("main.rs"))');
    check(row.includes('second: main says hello') && row.includes('bytes'), `main.rs row: ${row}`);
  });
  await visit(noJs, 'blob with anchor', '/site/blob/main/src/main.rs#L3', async (page) => {
    check(await page.locator('table.code tr').count() === 5, 'five numbered lines');
    check(await page.locator('#L1 .c').count() === 1, 'comment highlighted');
    const bg = (sel) => page.locator(sel).evaluate((el) => getComputedStyle(el).backgroundColor);
    check((await bg('#L3')) !== (await bg('#L2')), 'the #L3 target line is marked');
  });
  await visit(noJs, 'blob range', '/site/blob/main/src/main.rs?lines=2-3#L2', async (page) => {
    check(await page.locator('tr.sel').count() === 2, 'two selected lines');
  });
  await visit(noJs, 'blame', '/site/blame/main/src/main.rs', async (page) => {
    check(await page.locator(`a[href="/site/commit/${commitId}"]`).count() >= 1, 'a line blamed on the head commit');
    check(await page.locator('td.who a.mono').count() >= 2, 'two blame groups');
  });
  await visit(noJs, 'history', '/site/log/main/src/main.rs', async (page) => {
    check(await page.locator('table.files tr').count() === 2, 'two commits touched main.rs');
  });
  await visit(noJs, 'commit', `/site/commit/${commitId}`, async (page) => {
    const h2 = await text(page, 'h2');
    check(/2 files changed, 4 insertions\(\+\), 1 deletion\(-\)/.test(h2), `diffstat: ${h2}`);
    check(await page.locator('a:text("More context")').count() >= 1, 'context links');
  });
  await visit(noJs, 'odd path', '/site/tree/main/dir%20with%20space', async (page) => {
    check(await page.locator('a:text("ünïcode file.txt")').count() === 1, 'unicode name listed');
  });

  const phone = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 375, height: 740 }, isMobile: true });
  for (const url of ['/site', '/site/tree/main/src', '/site/blob/main/src/main.rs', '/site/blame/main/src/main.rs', `/site/commit/${commitId}`]) {
    await visit(phone, `phone ${url}`, url, async (page) => {
      const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]).catch(() => [null, null]);
      if (scroll !== null) check(scroll <= width + 1, `page scrolls sideways: ${scroll} > ${width}`);
      const box = await page.locator('main').boundingBox();
      check(box && box.width <= 375, `main is ${box && box.width}px wide`);
    });
  }

  const dark = await browser.newContext({ javaScriptEnabled: false, colorScheme: 'dark' });
  await visit(dark, 'dark mode', '/site', async (page) => {
    const bg = await page.locator('body').evaluate((el) => getComputedStyle(el).backgroundColor);
    check(bg === 'rgb(13, 17, 23)', `dark background, got ${bg}`);
  });

  // JavaScript on: hostile README content must not run, and axe must find no serious problem.
  const js = await browser.newContext();
  await visit(js, 'hostile README inert', '/site', async (page) => {
    let dialog = null;
    page.on('dialog', (d) => { dialog = d.message(); d.dismiss(); });
    await page.waitForTimeout(300);
    check(dialog === null, `a dialog opened: ${dialog}`);
    check(await page.evaluate(() => window.__pwned === undefined), 'injected code ran');
  });
  const axeSource = require.resolve('axe-core/axe.min.js');
  for (const url of ['/', '/site', '/site/tree/main/src', '/site/blob/main/src/main.rs', '/site/blob/main/docs/guide.md', '/site/blame/main/src/main.rs', `/site/commit/${commitId}`, '/site/log/main', '/site/refs']) {
    await visit(js, `axe ${url}`, url, async (page) => {
      await page.addScriptTag({ path: axeSource });
      const result = await page.evaluate(() => window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'best-practice'] }));
      const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
      check(bad.length === 0, bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`).join('; '));
    });
  }

  await browser.close();
  if (failures.length) {
    console.error(`\n${failures.length} browser check(s) failed:\n- ${failures.join('\n- ')}`);
    process.exit(1);
  }
})().catch((err) => {
  console.error(err);
  process.exit(2);
});
