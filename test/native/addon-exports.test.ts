// The hand-written ts/native/addon.d.ts is the definition of the native API: the built addon
// must export exactly its names, and its classes exactly their declared methods.
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { loadAddon, packageRoot } from '../../ts/native/index.ts';

function declared() {
  const file = path.join(packageRoot, 'ts/native/addon.d.ts');
  const src = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const exportsOf: string[] = [];
  const methods = new Map<string, string[]>();
  src.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node) && node.name.text === 'NativeAddon') {
      for (const m of node.members) if (m.name) exportsOf.push((m.name as ts.Identifier).text);
    }
    if (ts.isClassDeclaration(node) && node.name) {
      methods.set(
        node.name.text,
        node.members.filter(ts.isMethodDeclaration).map((m) => (m.name as ts.Identifier).text),
      );
    }
  });
  return { exportsOf, methods };
}

describe('native addon exports', () => {
  const addon = loadAddon() as unknown as Record<string, unknown>;
  const { exportsOf, methods } = declared();

  it('exports exactly the names of NativeAddon in addon.d.ts', () => {
    expect(Object.keys(addon).sort()).toEqual([...exportsOf].sort());
  });

  it.each([...methods.keys()])('class %s has exactly the declared methods', (name) => {
    const cls = addon[name] as { prototype: object };
    const proto = Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== 'constructor');
    expect(proto.sort()).toEqual([...methods.get(name)!].sort());
  });

  it('reports whether CUDA was compiled in, and whether a device is usable', () => {
    expect(typeof addon.cudaCompiled).toBe('boolean');
    expect(typeof addon.version).toBe('string');
    const cuda = loadAddon().cudaDevice();
    expect(cuda.compiled).toBe(addon.cudaCompiled);
    expect(typeof cuda.usable).toBe('boolean');
    expect(cuda.description.length).toBeGreaterThan(0); // the device, or why there is none
    if (!cuda.compiled) expect(cuda.usable).toBe(false);
  });
});
