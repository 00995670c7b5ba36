// The console's stylesheet, inlined into the page and allowed by its hash (no external fonts or files).
export const CONSOLE_CSS = String.raw`
:root {
  color-scheme: light;
  --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #667085; --line: #e2e5ea;
  --accent: #2456c7; --ok: #1d7a46; --warn: #a15c00; --bad: #b42318; --idle: #7a5af8;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--ink); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
header.bar { display: flex; align-items: center; justify-content: space-between; gap: 16px; padding: 10px 20px; background: #151a24; color: #fff; }
header.bar h1 { font-size: 16px; margin: 0; font-weight: 600; }
header.bar h1 span { color: #aab3c5; font-weight: 400; margin-left: 6px; }
header.bar .status { display: flex; align-items: center; gap: 14px; font-size: 13px; color: #cfd6e4; }
header.bar .status .error { color: #ffb4a8; }
header.bar button { background: transparent; color: #fff; border-color: #4a5468; }
header.bar button:hover:not(:disabled) { color: #fff; border-color: #fff; }
main { padding: 16px 20px 40px; display: grid; gap: 16px; }
#app { display: grid; gap: 16px; grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); }
@media (max-width: 1000px) { #app { grid-template-columns: minmax(0, 1fr); } }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; min-width: 0; }
.card.wide { grid-column: 1 / -1; }
.card h2 { font-size: 15px; margin: 0 0 10px; display: flex; align-items: center; gap: 8px; }
.card h3 { font-size: 13px; margin: 14px 0 6px; color: var(--muted); font-weight: 600; }
.login { max-width: 460px; margin: 40px auto; }
.login form { display: flex; gap: 8px; }
.login input { flex: 1; }
.hint { color: var(--muted); margin: 0 0 10px; }
.error, .error-text { color: var(--bad); }
.error-text { max-width: 320px; overflow-wrap: anywhere; font-size: 12px; }
input, select, button { font: inherit; color: inherit; }
input, select { padding: 5px 8px; border: 1px solid #c9ced6; border-radius: 5px; background: #fff; min-width: 0; }
button { padding: 5px 11px; border: 1px solid #c9ced6; border-radius: 5px; background: #fff; cursor: pointer; }
button:hover:not(:disabled) { border-color: var(--accent); color: var(--accent); }
button:disabled { opacity: .45; cursor: default; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.primary:hover:not(:disabled) { color: #fff; filter: brightness(1.1); }
button.small { padding: 2px 8px; font-size: 12px; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; margin: 0 0 12px; }
.stats div { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.stats dt { color: var(--muted); font-size: 12px; }
.stats dd { margin: 2px 0 0; font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stats dd small { font-size: 12px; font-weight: 400; color: var(--muted); }
.val-ok { color: var(--ok); }
.val-down { color: var(--bad); }
.row { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }
output { color: var(--muted); overflow-wrap: anywhere; }
output.failed { color: var(--bad); }
ul.errors { margin: 10px 0 0; padding-left: 18px; color: var(--bad); font-size: 13px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: 12px; border-bottom: 1px solid var(--line); padding: 5px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: middle; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.buttons { white-space: nowrap; text-align: right; }
td.buttons button + button { margin-left: 4px; }
.empty { color: var(--muted); margin: 8px 0 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; background: #eef0f4; color: #3b4454; white-space: nowrap; }
.badge.running, .badge.enqueued, .badge.moving { background: #e3ebfd; color: var(--accent); }
.badge.succeeded, .badge.archived, .badge.ok { background: #dcf3e5; color: var(--ok); }
.badge.failed, .badge.down, .badge.offline { background: #fde4e1; color: var(--bad); }
.badge.paused, .badge.pausing, .badge.cancelling, .badge.partial { background: #fdf0d9; color: var(--warn); }
.badge.idle { background: #ece7fe; color: var(--idle); }
.badge.parked { background: #e4e7ec; color: #344054; }
.muted { color: var(--muted); font-size: 12px; margin-left: 4px; }
.badge.restored { background: #e6f4f7; color: #0e6a80; }
progress { width: 140px; height: 12px; vertical-align: middle; accent-color: var(--accent); }
form.inline { display: flex; flex-wrap: wrap; align-items: flex-end; gap: 8px; margin-top: 10px; }
form.inline label { display: flex; flex-direction: column; gap: 2px; font-size: 12px; color: var(--muted); }
form.inline label input { width: 9.5em; }
form.inline label input.short { width: 6em; }
.secret { margin-top: 10px; padding: 10px 12px; border: 1px solid #f3c969; background: #fffaeb; border-radius: 6px; }
.secret p { margin: 4px 0; }
.secret code { user-select: all; background: #fff; padding: 1px 4px; border-radius: 3px; }
.fleet-grid { display: grid; grid-template-columns: minmax(280px, 1fr) minmax(320px, 2fr); gap: 14px; margin-top: 10px; }
@media (max-width: 900px) { .fleet-grid { grid-template-columns: 1fr; } }
tr.vehicle { cursor: pointer; }
tr.vehicle:hover { background: #f5f7fb; }
tr.vehicle.selected { background: #e8eefc; }
tr.vehicle:focus { outline: 2px solid var(--accent); outline-offset: -2px; }
svg.map { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #f8faf9; display: block; }
svg.map .grid { stroke: #e6ebe8; stroke-width: 1; }
svg.map .track { fill: none; stroke: var(--accent); stroke-width: 2.5; stroke-linejoin: round; stroke-linecap: round; }
svg.map .vehicle { stroke: #fff; stroke-width: 1.5; fill: #8a94a6; }
svg.map .vehicle.moving { fill: var(--accent); }
svg.map .vehicle.idle { fill: var(--idle); }
svg.map .vehicle.parked { fill: #475467; }
svg.map .vehicle.offline { fill: #c0c6d0; }
svg.map .vehicle.selected { stroke: var(--ink); stroke-width: 2.5; }
svg.map .label { font-size: 11px; fill: #344054; }
svg.map .trip-start { fill: var(--ok); stroke: #fff; stroke-width: 1.5; }
svg.map .trip-end { fill: var(--bad); stroke: #fff; stroke-width: 1.5; }
svg.map .note { font-size: 13px; fill: var(--muted); }
.caption { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
`;
