// The hand-written declarations (src/*.d.ts, checked by `tsc --noEmit`) and the modules
// agree: every value a .d.ts declares is exported by its module, and the other way round.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

const MODULES = ['index', 'errors', 'wire', 'express'];

function declared(name) {
  const dts = readFileSync(new URL(`../src/${name}.d.ts`, import.meta.url), 'utf8');
  const names = new Set([...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]));
  // `export * from './x.js'` re-exports x's values.
  for (const [, from] of dts.matchAll(/^export \* from '\.\/(\w+)\.js';/gm)) for (const n of declared(from)) names.add(n);
  return names;
}

for (const name of MODULES) {
  test(`src/${name}.d.ts declares exactly what src/${name}.js exports`, async () => {
    const mod = await import(`../src/${name}.js`);
    assert.deepEqual([...declared(name)].sort(), Object.keys(mod).sort());
  });
}
