// CPU time of local processes from /proc (Linux): what a bench charges to the gateway or ClickHouse.
import { readdirSync, readFileSync } from 'node:fs';

/** User + system ticks of each process, with its parent, process group and command name; exited ones are skipped. */
function* processes(pids) {
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      yield { comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), ppid: Number(f[1]), pgid: Number(f[2]), ticks: Number(f[11]) + Number(f[12]) };
    } catch {
      /* exited */
    }
  }
}

const allPids = () => readdirSync('/proc').filter((d) => /^\d+$/.test(d));

/**
 * CPU seconds (user + system) used so far by one pid, by the processes of a process group
 * (`pgid`), or by the children of a process (`ppid`: the workerd a Miniflare of this process runs).
 */
export function cpuSeconds({ pgid, pid, ppid }) {
  let ticks = 0;
  for (const p of processes(pid ? [String(pid)] : allPids())) {
    if ((pgid === undefined || p.pgid === pgid) && (ppid === undefined || p.ppid === ppid)) ticks += p.ticks;
  }
  return ticks / 100;
}

/** CPU seconds used so far by each command (workerd, node, …) of a process group. */
export function cpuByCommand(pgid) {
  const out = {};
  for (const p of processes(allPids())) if (p.pgid === pgid) out[p.comm] = (out[p.comm] ?? 0) + p.ticks / 100;
  return out;
}
