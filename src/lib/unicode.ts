// Text that UTF-8 can carry: an unpaired UTF-16 surrogate cannot be stored anywhere without being
// replaced, so text holding one is refused rather than silently changed.

const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
type WellFormed = { isWellFormed?: () => boolean };

/** Whether a string holds an unpaired surrogate half (native `isWellFormed` where the runtime has it). */
export function hasLoneSurrogate(text: string): boolean {
  const wf = (text as unknown as WellFormed).isWellFormed;
  // With the `u` flag a surrogate range matches only unpaired halves.
  return wf ? !wf.call(text) : LONE_SURROGATE.test(text);
}

export const UNPAIRED_SURROGATE_MESSAGE = 'must be valid Unicode (it holds an unpaired UTF-16 surrogate)';
