#!/usr/bin/env node
// native-sources.mjs: prints the native source lists of native/sources.json (the file
// CMakeLists.txt reads too) for binding.gyp's command expansions, space-separated, paths relative
// to the repository root. The gyp build is CPU-only: each library gets its no_cuda variants.
// Usage:
//   node scripts/native-sources.mjs sources LIB...   the files of these libraries (globs expanded,
//                                                    the ISA and variant files left out, the
//                                                    no_cuda variants added)
//   node scripts/native-sources.mjs isa GROUP        the files of one ISA group
//   node scripts/native-sources.mjs isa-flags GROUP  that group's compiler flags
//   node scripts/native-sources.mjs isa-groups G...  prints nothing; fails, naming the difference,
//                                                    unless G... are exactly sources.json's groups
//                                                    (binding.gyp has one target per group)
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const spec = JSON.parse(fs.readFileSync(path.join(root, 'native/sources.json'), 'utf8'));

function fail(message) {
  console.error(`native-sources: ${message}`);
  process.exit(1);
}

// A pattern's files: a plain path as it is (it must exist), a glob (* and ? in the file name)
// matched within its folder, sorted.
function expand(pattern) {
  const dir = path.posix.dirname(pattern);
  const name = path.posix.basename(pattern);
  if (!/[*?]/.test(name)) {
    if (!fs.existsSync(path.join(root, pattern))) fail(`${pattern} (native/sources.json) does not exist`);
    return [pattern];
  }
  const re = new RegExp(`^${name.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return fs
    .readdirSync(path.join(root, dir))
    .filter((f) => re.test(f))
    .sort()
    .map((f) => `${dir}/${f}`);
}

const swapped = new Set([
  ...Object.values(spec.variants).flatMap((rule) => Object.values(rule).flat()),
  ...Object.values(spec.isa).flat(),
]);

function librarySources(lib) {
  const patterns = spec.libraries[lib];
  if (!patterns) fail(`no library '${lib}' in native/sources.json (it has ${Object.keys(spec.libraries).join(', ')})`);
  const files = patterns.flatMap(expand).filter((f) => !swapped.has(f));
  return [...new Set([...files, ...(spec.variants.no_cuda[lib] ?? [])])];
}

function group(table, name) {
  const v = spec[table][name];
  if (!v) fail(`no ISA group '${name}' in native/sources.json's ${table} (it has ${Object.keys(spec[table]).join(', ')})`);
  return v;
}

const [cmd, ...args] = process.argv.slice(2);
let out;
if (cmd === 'sources') out = args.flatMap(librarySources);
else if (cmd === 'isa') out = group('isa', args[0]);
else if (cmd === 'isa-flags') out = group('isa_flags', args[0]);
else if (cmd === 'isa-groups') {
  const want = Object.keys(spec.isa).sort().join(' ');
  const have = [...args].sort().join(' ');
  if (want !== have) fail(`binding.gyp has ISA targets for '${have}', native/sources.json has the groups '${want}': add or remove binding.gyp's kvserve_isa_* targets`);
  out = [];
} else fail(`unknown command '${cmd}' (sources, isa, isa-flags, isa-groups)`);
process.stdout.write(out.join(' ') + '\n');
