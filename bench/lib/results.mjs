// The machine-readable side of a bench: one `RESULT <field> <number>` line per figure, which
// bench/run.mjs collects into bench/results.json (a floor is `<field>_floor`).

/** Prints one figure for bench/results.json; non-finite values are skipped (nothing measured). */
export function result(field, value) {
  if (!/^[a-z][a-z0-9_]*$/.test(field)) throw new Error(`bad result field ${field}`);
  if (typeof value !== 'number' || !Number.isFinite(value)) return;
  console.log(`RESULT ${field} ${Number(value.toPrecision(6))}`);
}

/** The floor a figure is compared with, measured in the same run. */
export function floor(field, value) {
  result(`${field}_floor`, value);
}
