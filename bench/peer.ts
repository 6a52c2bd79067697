// peer.ts: node-llama-cpp, llama.cpp for Node: the engine benchmark's peer, kept out of the
// package's dependencies (with its prebuilt llama.cpp binaries, CUDA and Vulkan builds included,
// it is about 620 MB), so `npm install` does not fetch it.
//
// Owns: the peer's cache directory, <cache>/peers/node-llama-cpp-3.21.1, where <cache> is
// $KVSERVE_CACHE, else ~/.cache/kvserve; installing it there, pinned, on first use (one line
// says so), with node-llama-cpp's postinstall skipped (it would download or build llama.cpp: the
// prebuilt CPU binaries in its optional dependencies are all the benchmark uses); and importing
// it from there.
// Stays true: one version, NODE_LLAMA_CPP_VERSION; the directory counts as installed only once
// npm finished there (a marker file written last, in a staging directory then renamed into place).
// `npm run peer:install` (tsx bench/peer.ts install) installs it ahead of time: .ci/run does, so
// the llama.cpp tests run in CI.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const NODE_LLAMA_CPP_VERSION = '3.21.1';
const MARKER = '.kvserve-installed';

export function peerCacheRoot(): string {
  return path.join(process.env.KVSERVE_CACHE || path.join(os.homedir(), '.cache', 'kvserve'), 'peers');
}

export function nodeLlamaCppDir(): string {
  return path.join(peerCacheRoot(), `node-llama-cpp-${NODE_LLAMA_CPP_VERSION}`);
}

// Whether the pinned version is installed (and its install finished).
export function nodeLlamaCppInstalled(): boolean {
  return fs.existsSync(path.join(nodeLlamaCppDir(), MARKER));
}

// Installs the pinned version into nodeLlamaCppDir() unless it is there; returns the directory.
// npm installs into a fresh temporary sibling, renamed into place when it succeeded, so an
// interrupted install leaves nothing that looks installed.
export function ensureNodeLlamaCpp(): string {
  const dir = nodeLlamaCppDir();
  if (nodeLlamaCppInstalled()) return dir;
  console.log(`peer: installing node-llama-cpp ${NODE_LLAMA_CPP_VERSION} (llama.cpp for the engine benchmark) into ${dir}, once; its postinstall download is skipped`);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  intoPlace(dir, 'installing', (staging) => {
    fs.writeFileSync(
      path.join(staging, 'package.json'),
      JSON.stringify({ name: 'kvserve-peer-node-llama-cpp', private: true, dependencies: { 'node-llama-cpp': NODE_LLAMA_CPP_VERSION } }, null, 2),
    );
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const r = spawnSync(npm, ['install', '--prefix', staging, '--no-audit', '--no-fund', '--loglevel=error'], {
      stdio: 'inherit',
      env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true', NODE_LLAMA_CPP_POSTINSTALL: 'skip' },
    });
    if (r.status !== 0) throw new Error(`npm install of node-llama-cpp ${NODE_LLAMA_CPP_VERSION} into ${staging} failed (${r.error?.message ?? `exit code ${r.status}`})`);
  });
  return dir;
}

// Fills a fresh sibling of dir (fill), marks it finished (MARKER, written last) and renames it
// into place, so that an interrupted fill leaves nothing that looks finished.
function intoPlace(dir: string, doing: string, fill: (staging: string) => void): void {
  const staging = fs.mkdtempSync(`${dir}.${doing}-`);
  try {
    fill(staging);
    fs.writeFileSync(path.join(staging, MARKER), `${new Date().toISOString()}\n`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(staging, dir);
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

// The entry of the installed package (its package.json's exports['.'], the ESM build).
function entryFile(dir: string): string {
  const pkgDir = path.join(dir, 'node_modules', 'node-llama-cpp');
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')) as {
    version: string;
    main?: string;
    exports?: { '.'?: { import?: string; default?: string } };
  };
  if (pkg.version !== NODE_LLAMA_CPP_VERSION) throw new Error(`${pkgDir} holds node-llama-cpp ${pkg.version}, not ${NODE_LLAMA_CPP_VERSION}: remove ${dir}`);
  const entry = pkg.exports?.['.']?.import ?? pkg.exports?.['.']?.default ?? pkg.main;
  if (!entry) throw new Error(`${pkgDir}/package.json names no entry point`);
  return path.join(pkgDir, entry);
}

// llama.cpp's prebuilt CPU binaries come as one library per CPU family (libggml-cpu-haswell.so:
// AVX2; -skylakex: AVX-512; -zen4: AVX-512 with BF16; ...), and it loads the best one the CPU
// runs. A copy of the installed peer that holds only `variant`'s library (and only this
// platform's binaries), in <cache>/peers/node-llama-cpp-VERSION-cpu-VARIANT: llama.cpp as it runs
// on a CPU of that family, on this one. Its files are hard links to the installed ones (a copy
// where the file system refuses links), made once, in a staging directory renamed into place.
export function nodeLlamaCppCpuVariantDir(variant: string): string {
  if (!/^[a-z0-9_]+$/.test(variant)) throw new Error(`a llama.cpp CPU variant is a name like haswell, got '${variant}'`);
  const src = ensureNodeLlamaCpp();
  const dir = `${src}-cpu-${variant}`;
  if (fs.existsSync(path.join(dir, MARKER))) return dir;
  const platformPkg = `${process.platform}-${process.arch}`;
  const bins = path.join(src, 'node_modules', '@node-llama-cpp', platformPkg, 'bins', platformPkg);
  const libs = fs.existsSync(bins) ? fs.readdirSync(bins).filter((f) => /^libggml-cpu-.*\.so$/.test(f)) : [];
  const lib = `libggml-cpu-${variant}.so`;
  if (!libs.includes(lib)) {
    const known = libs.map((f) => f.slice('libggml-cpu-'.length, -'.so'.length)).sort();
    throw new Error(`node-llama-cpp ${NODE_LLAMA_CPP_VERSION} has no CPU variant '${variant}' for ${platformPkg}; it has: ${known.join(', ') || 'none'}`);
  }
  // The marker too: it is written anew, and a link to the installed one would overwrite that.
  const skip = (rel: string, name: string) =>
    (rel === '' && name === MARKER) ||
    (rel === path.join('node_modules', '@node-llama-cpp') && name !== platformPkg) ||
    (/^libggml-cpu-.*\.so$/.test(name) && name !== lib);
  const mirror = (staging: string, rel: string) => {
    for (const e of fs.readdirSync(path.join(src, rel), { withFileTypes: true })) {
      if (skip(rel, e.name)) continue;
      const from = path.join(src, rel, e.name);
      const to = path.join(staging, rel, e.name);
      if (e.isDirectory()) {
        fs.mkdirSync(to);
        mirror(staging, path.join(rel, e.name));
      } else if (e.isSymbolicLink()) {
        fs.symlinkSync(fs.readlinkSync(from), to);
      } else {
        try {
          fs.linkSync(from, to);
        } catch {
          fs.copyFileSync(from, to);
        }
      }
    }
  };
  intoPlace(dir, 'making', (staging) => mirror(staging, ''));
  return dir;
}

// node-llama-cpp, installed first if it is not there; with cpuVariant, the copy that holds only
// that CPU variant (nodeLlamaCppCpuVariantDir). T: the module's type, as the caller declares the
// part it uses (the package is not installed where tsc looks).
export async function importNodeLlamaCpp<T>(cpuVariant?: string): Promise<T> {
  const dir = cpuVariant ? nodeLlamaCppCpuVariantDir(cpuVariant) : ensureNodeLlamaCpp();
  return (await import(pathToFileURL(entryFile(dir)).href)) as T;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const cmd = process.argv[2];
  if (cmd === 'install') {
    const already = nodeLlamaCppInstalled();
    const dir = ensureNodeLlamaCpp();
    await import(pathToFileURL(entryFile(dir)).href); // it loads
    console.log(`peer: node-llama-cpp ${NODE_LLAMA_CPP_VERSION} ${already ? 'is installed' : 'installed'} in ${dir}`);
  } else if (cmd === 'where') {
    console.log(nodeLlamaCppDir());
  } else {
    console.error('usage: tsx bench/peer.ts install | where');
    process.exitCode = 2;
  }
}
