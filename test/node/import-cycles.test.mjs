// No module of the Worker imports itself back at runtime (issue 12): an import circle makes load order
// decide which side sees the other's exports as undefined. Type-only imports are erased and excluded.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ROOTS = ['src', 'durable-objects'];

function listTs(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...listTs(path));
    else if (/\.(ts|mts)$/.test(name) && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/** Whether an import or re-export is erased from the emitted JavaScript (`import type`, or only `type` names). */
function typeOnly(clause) {
  if (!clause) return false; // `import './x'` runs the module
  if (clause.isTypeOnly) return true;
  if (ts.isImportClause(clause)) {
    if (clause.name) return false;
    const b = clause.namedBindings;
    return !!b && ts.isNamedImports(b) && b.elements.length > 0 && b.elements.every((e) => e.isTypeOnly);
  }
  // export { a, type B } from './x'
  const e = clause.exportClause;
  return !!e && ts.isNamedExports(e) && e.elements.length > 0 && e.elements.every((x) => x.isTypeOnly);
}

/**
 * The relative specifiers a module loads at runtime (static imports and re-exports). Imports whose
 * names are only used as types but not marked `type` count too: the check does not rely on elision.
 */
export function runtimeImports(fileName, text) {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.ES2022, false, ts.ScriptKind.TS);
  const out = [];
  for (const s of source.statements) {
    if (ts.isImportDeclaration(s)) {
      if (!typeOnly(s.importClause ?? null)) out.push(s.moduleSpecifier.text);
    } else if (ts.isExportDeclaration(s) && s.moduleSpecifier) {
      if (!(s.isTypeOnly || typeOnly(s))) out.push(s.moduleSpecifier.text);
    }
  }
  return out.filter((spec) => spec.startsWith('.'));
}

function resolveSpecifier(from, spec, exists) {
  const base = resolve(dirname(from), spec);
  for (const candidate of [base, `${base}.ts`, `${base}.mts`, join(base, 'index.ts')]) if (exists(candidate)) return candidate;
  return null;
}

/** Every runtime cycle of the graph {file: text}, each as its files in import order (Tarjan's SCCs). */
export function runtimeCycles(files) {
  const exists = (p) => Object.hasOwn(files, p);
  const edges = new Map();
  for (const [file, text] of Object.entries(files)) {
    edges.set(file, [...new Set(runtimeImports(file, text).map((spec) => resolveSpecifier(file, spec, exists)).filter(Boolean))]);
  }
  let counter = 0;
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const cycles = [];
  const visit = (v) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v)) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), index.get(w)));
    }
    if (low.get(v) !== index.get(v)) return;
    const component = [];
    let w;
    do {
      w = stack.pop();
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || edges.get(v).includes(v)) cycles.push(component.reverse());
  };
  for (const v of edges.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

function projectFiles() {
  const files = {};
  for (const root of ROOTS) for (const f of listTs(join(ROOT, root))) files[f] = readFileSync(f, 'utf8');
  return files;
}

describe('import graph of src/ and durable-objects/', () => {
  it('has no runtime import cycle', () => {
    const cycles = runtimeCycles(projectFiles()).map((c) => c.map((f) => relative(ROOT, f)));
    expect(cycles).toEqual([]);
  });

  it('keeps the two circles of issue 12 broken, types included (env.ts may name the class as a type)', () => {
    const files = projectFiles();
    const importsOf = (file) =>
      ts
        .createSourceFile(file, files[join(ROOT, file)], ts.ScriptTarget.ES2022, false, ts.ScriptKind.TS)
        .statements.filter((s) => (ts.isImportDeclaration(s) || ts.isExportDeclaration(s)) && s.moduleSpecifier)
        .map((s) => relative(ROOT, resolve(ROOT, dirname(file), s.moduleSpecifier.text)));
    expect(importsOf('src/device/packed.ts')).not.toContain('durable-objects/device-object');
    expect(importsOf('src/legacy/realtime.ts')).not.toContain('src/ingest/accept');
    expect(runtimeImports('src/env.ts', files[join(ROOT, 'src/env.ts')])).toEqual([]);
    // The object's stores know nothing of the class that holds them.
    for (const f of Object.keys(files).filter((p) => relative(ROOT, p).startsWith('src/device/'))) {
      expect(importsOf(relative(ROOT, f)), f).not.toContain('durable-objects/device-object');
    }
  });

  it('finds a circle through a value import, and none through `import type` or type-only names', () => {
    const a = join(ROOT, 'x', 'a.ts');
    const b = join(ROOT, 'x', 'b.ts');
    const c = join(ROOT, 'x', 'c.ts');
    expect(
      runtimeCycles({ [a]: "import { b } from './b';", [b]: "import { c } from './c';", [c]: "export { a } from './a';" }).map((cy) => cy.length),
    ).toEqual([3]);
    expect(runtimeCycles({ [a]: "import './b';", [b]: "import { type A } from './a';\nimport type { X } from './a';" })).toEqual([]);
    expect(runtimeCycles({ [a]: "import { b } from './b';", [b]: "import { type A, a } from './a';" })).toHaveLength(1);
    expect(runtimeCycles({ [a]: "import { b } from './b';", [b]: "export type { A } from './a';" })).toEqual([]);
  });
});
