// deploy-manifests.test.ts: the Kubernetes manifests in deploy/k8s/, checked offline:
//   - every YAML document parses (the `yaml` package), and each object is a known kind of the
//     Kubernetes API, valid against its schema (kubernetes-models: the API's OpenAPI schemas,
//     bundled and compiled, no network), with no field the API does not have (the schema
//     allows unknown fields, which the API server would drop: the TypeScript compiler's excess
//     property check on the models' interfaces finds them);
//   - every kvserve container's args are flags the launcher takes for its role (parseFlags, with
//     $(VAR) expanded as the kubelet does: the ConfigMap's values and a pod IP; the Secret's
//     values in the environment, where the launcher reads them), secrets are never in args,
//     each Secret key is one the README's `kubectl create secret` makes, and every node has
//     resource requests and a readiness probe on /ready (the frontend's GET, the workers' exec
//     probe script).
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import * as apps from 'kubernetes-models/apps/v1';
import * as core from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { parseFlags } from '../../ts/launcher/flags.ts';

const dir = 'deploy/k8s';
const SECRET_KEYS = { 'cluster-secret': 'KVSERVE_CLUSTER_SECRET', 'redis-url': 'KVSERVE_REDIS_URL', 'redis-password': 'REDIS_PASSWORD' } as const;
const SAMPLE_SECRETS: Record<string, string> = {
  'cluster-secret': 'sample-cluster-secret-0123456789',
  'redis-url': 'redis://:sample-password@kvserve-redis:6379',
  'redis-password': 'sample-password',
};
const POD_IP = '10.42.0.7';

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  data?: Record<string, string>;
  spec?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    configMapKeyRef?: { name: string; key: string };
    secretKeyRef?: { name: string; key: string };
  };
}

interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: EnvVar[];
  readinessProbe?: { httpGet?: { path: string }; exec?: { command: string[] } };
  resources?: { requests?: Record<string, string> };
}

const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
const objects: { file: string; object: K8sObject }[] = [];
for (const file of files) {
  for (const doc of parseAllDocuments(fs.readFileSync(path.join(dir, file), 'utf8'))) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const object = doc.toJS() as K8sObject | null;
    if (object !== null) objects.push({ file, object });
  }
}
const where = (o: { file: string; object: K8sObject }) => `${o.file}: ${o.object.kind} ${o.object.metadata?.name}`;

// The kubernetes-models module of each apiVersion the manifests use.
const MODULES: Record<string, Record<string, unknown>> = { v1: core, 'apps/v1': apps };

function modelClass(apiVersion: string, kind: string): new (data: unknown) => { validate(): void } {
  const mod = MODULES[apiVersion];
  if (!mod) throw new Error(`apiVersion ${apiVersion}: add its kubernetes-models module to MODULES`);
  const model = mod[kind];
  if (typeof model !== 'function') throw new Error(`${apiVersion} ${kind} is not a kind of the Kubernetes API`);
  return model as new (data: unknown) => { validate(): void };
}

// Type-checks `const o: I<Kind> = <object>` for every object in one in-memory file next to this
// test (so kubernetes-models resolves from node_modules): an unknown field is an excess property.
function unknownFieldErrors(list: { file: string; object: K8sObject }[]): string[] {
  const file = path.resolve('test/unit/deploy-manifests.check.ts');
  const source =
    list.map((o, i) => `import type { I${o.object.kind} as T${i} } from 'kubernetes-models/${o.object.apiVersion}';`).join('\n') +
    '\n' +
    list.map((o, i) => `export const o${i}: T${i} = ${JSON.stringify(o.object)};`).join('\n') +
    '\n';
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    path.resolve(name) === file ? ts.createSourceFile(name, source, version) : getSourceFile(name, version, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => path.resolve(name) === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const at = line >= list.length + 1 ? where(list[line - list.length - 1]!) : 'imports';
    return `${at}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
}

// $(VAR) in args, expanded from the container's env as the kubelet does.
function envOf(c: Container, configMaps: Map<string, Record<string, string>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    const from = e.valueFrom;
    if (e.value !== undefined) env[e.name] = e.value;
    else if (from?.fieldRef?.fieldPath === 'status.podIP') env[e.name] = POD_IP;
    else if (from?.configMapKeyRef) {
      const value = configMaps.get(from.configMapKeyRef.name)?.[from.configMapKeyRef.key];
      if (value === undefined) throw new Error(`${c.name}: env ${e.name} names ${from.configMapKeyRef.name}/${from.configMapKeyRef.key}, which no ConfigMap here has`);
      env[e.name] = value;
    } else if (from?.secretKeyRef) env[e.name] = SAMPLE_SECRETS[from.secretKeyRef.key] ?? '';
    else throw new Error(`${c.name}: env ${e.name} has a source this test does not know`);
  }
  return env;
}

describe('deploy/k8s manifests', () => {
  it('parse, and every object is a valid Kubernetes API object', () => {
    expect(files.length).toBeGreaterThan(0);
    expect(objects.length).toBeGreaterThan(0);
    const invalid: string[] = [];
    for (const o of objects) {
      try {
        const Model = modelClass(o.object.apiVersion, o.object.kind);
        new Model(o.object).validate();
      } catch (err) {
        invalid.push(`${where(o)}: ${(err as Error).message}`);
      }
    }
    expect(invalid).toEqual([]);
  });

  it('have no field the Kubernetes API does not know', () => {
    expect(unknownFieldErrors(objects)).toEqual([]);
  });

  it('a misspelt field is caught (the check above can fail)', () => {
    const deployment = objects.find((o) => o.object.kind === 'Deployment')!;
    const misspelt = structuredClone(deployment);
    const container = misspelt.object.spec.template.spec.containers[0];
    container.readinesProbe = container.readinessProbe;
    delete container.readinessProbe;
    expect(unknownFieldErrors([misspelt]).join('\n')).toMatch(/readinesProbe/);
  });

  it("give each kvserve node flags the launcher takes for its role, secrets only in the environment, requests and a readiness probe", () => {
    const configMaps = new Map(objects.filter((o) => o.object.kind === 'ConfigMap').map((o) => [o.object.metadata.name, o.object.data ?? {}]));
    const nodes = objects.filter((o) => o.object.kind === 'Deployment' && o.object.metadata.labels?.['app.kubernetes.io/component'] !== 'redis');
    expect(nodes.map((o) => o.object.metadata.labels?.['app.kubernetes.io/component']).sort()).toEqual(['frontend', 'prefill', 'worker']);
    const saved = { ...process.env };
    try {
      for (const o of nodes) {
        const role = o.object.metadata.labels!['app.kubernetes.io/component']!;
        const containers = o.object.spec.template.spec.containers as Container[];
        expect(containers, where(o)).toHaveLength(1);
        const c = containers[0]!;
        const env = envOf(c, configMaps);
        const secretVars = new Set((c.env ?? []).filter((e) => e.valueFrom?.secretKeyRef).map((e) => e.name));
        const args = (c.args ?? []).map((a) =>
          a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_, name: string) => {
            if (secretVars.has(name)) throw new Error(`${where(o)}: $(${name}) puts a secret on the command line`);
            if (env[name] === undefined) throw new Error(`${where(o)}: $(${name}) is not in the container's env`);
            return env[name]!;
          }),
        );
        // The launcher reads the secrets from its environment.
        delete process.env.KVSERVE_REDIS_URL;
        delete process.env.KVSERVE_CLUSTER_SECRET;
        for (const name of secretVars) process.env[name] = env[name];
        const flags = parseFlags(args);
        expect(flags.role, where(o)).toBe(role === 'frontend' ? 'frontend' : role);
        expect(flags.model, where(o)).toBe(configMaps.get('kvserve')!['model-dir']);
        expect(flags.clusterSecret, where(o)).toBe(SAMPLE_SECRETS['cluster-secret']);
        expect(flags.redisUrl, where(o)).toBe(SAMPLE_SECRETS['redis-url']);
        if (role !== 'frontend') expect(flags.advertiseHost, where(o)).toBe(POD_IP);
        expect(c.resources?.requests?.cpu, where(o)).toBeDefined();
        expect(c.resources?.requests?.memory, where(o)).toBeDefined();
        if (role === 'frontend') {
          expect(c.readinessProbe?.httpGet?.path, where(o)).toBe('/ready');
        } else {
          const command = c.readinessProbe?.exec?.command ?? [];
          expect(command.slice(0, 2), where(o)).toEqual(['node', 'scripts/worker-ready.mjs']);
          expect(fs.existsSync(command[1]!)).toBe(true);
        }
      }
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
    // Every Secret key named is one the README's `kubectl create secret generic kvserve` makes.
    const readme = fs.readFileSync('README.md', 'utf8');
    for (const o of objects) {
      for (const match of JSON.stringify(o.object).matchAll(/"secretKeyRef":\{"name":"([^"]+)","key":"([^"]+)"\}/g)) {
        expect(match[1], where(o)).toBe('kvserve');
        expect(Object.keys(SECRET_KEYS), where(o)).toContain(match[2]);
        expect(readme.includes(`--from-literal=${match[2]}=`), `README.md lacks --from-literal=${match[2]}=`).toBe(true);
      }
    }
  });
});
