//! Pure helpers of the dashboard: Prometheus text parsing and histogram quantiles (tested under node --test).

/**
 * Parse Prometheus text into samples. Only what the charts need: name, labels, value.
 * @param {string} text @returns {{name: string, labels: Record<string,string>, value: number}[]}
 */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[4]);
    // A line that is not a sample (or a NaN sample) has nothing to draw.
    if (Number.isNaN(value)) continue;
    const labels = {};
    for (const l of (m[3] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/**
 * A quantile from cumulative histogram bucket counts (deltas between two scrapes),
 * interpolated linearly inside its bucket, as PromQL's histogram_quantile does.
 * @param {[number, number][]} buckets [upper bound, cumulative count], sorted, +Inf last
 * @param {number} q @returns {number|null}
 */
export function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1, count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}
