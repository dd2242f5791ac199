// Validates monitoring.coreos.com/v1 ServiceMonitor documents against the
// prometheus-operator CRD schema, offline, with the npm package
// @kubernetes-models/prometheus-operator: its validators are generated from
// the CRD's openAPIV3Schema (types, enums, patterns, required fields).
// Like `kubectl apply` with server-side field validation (Strict, kubectl's
// default), unknown fields are errors too: the CRD schema lets the API
// server prune them silently, so the validator does not look for them, and
// this script does, from the package's type declarations (the properties of
// each generated class).
//
// usage: node servicemonitor.mjs NODE_PREFIX FILE.json
//   FILE.json: a JSON array of the documents to check.
// Exits 1 when a document fails, printing each problem.

import { readFileSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, file] = process.argv.slice(2);
const modules = join(prefix, "node_modules");
const pkg = join(modules, "@kubernetes-models/prometheus-operator");
const { ServiceMonitor } = await import(
  pathToFileURL(join(pkg, "monitoring.coreos.com/v1/ServiceMonitor.js")).href
);

// ---- the properties each generated class declares -------------------------
const classes = new Map(); // .d.ts path -> {props: Map(name -> type)} | null
function dts(spec, from) {
  const base = spec.startsWith(".") ? join(dirname(from), spec) : join(modules, spec);
  const path = base.replace(/\.js$/, "") + ".d.ts";
  if (!existsSync(path)) throw new Error(`type declarations not found: ${path}`);
  return path;
}
function load(path) {
  if (classes.has(path)) return classes.get(path);
  const text = readFileSync(path, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{([^}]*)\} from "([^"]+)"/g))
    for (const name of m[1].split(",").map((s) => s.trim()).filter(Boolean))
      imports.set(name, m[2]);
  const body = text.match(/export declare class \w+[^{]*\{([\s\S]*?)\n\s*constructor\(/);
  let info = null;
  if (body) {
    const props = new Map();
    // Split the body at ';' outside braces: multi-line map types stay whole.
    let depth = 0, cur = "";
    for (const ch of body[1].replace(/\s+/g, " ")) {
      if (ch === "{") depth++;
      if (ch === "}") depth--;
      if (ch === ";" && depth === 0) {
        const m = cur.trim().match(/^"([^"]+)"\??: (.*)$/);
        if (m) props.set(m[1], m[2].trim());
        cur = "";
      } else cur += ch;
    }
    info = { props, imports, path };
  }
  classes.set(path, info); // null: a type alias (string, int-or-string...)
  return info;
}

const problems = [];
function walk(value, type, ctx, where) {
  type = type.replace(/\s*\|\s*null$/, "").trim();
  let m;
  if ((m = type.match(/^Array<(.*)>$/))) {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, m[1], ctx, `${where}[${i}]`));
  } else if ((m = type.match(/^\{ ?\[key: string\]: (.*?);? ?\}$/))) {
    if (value && typeof value === "object")
      for (const [k, v] of Object.entries(value)) walk(v, m[1], ctx, `${where}.${k}`);
  } else if (/^I\w+$/.test(type) && ctx.imports.has(type)) {
    const info = load(dts(ctx.imports.get(type), ctx.path));
    if (info) object(value, info, where);
  }
}
function object(value, info, where) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return; // types: the validator
  for (const [k, v] of Object.entries(value)) {
    if (!info.props.has(k)) problems.push(`${where}: unknown field "${k}"`);
    else walk(v, info.props.get(k), info, `${where}.${k}`);
  }
}

// ---- check every document ---------------------------------------------------
const docs = JSON.parse(readFileSync(file, "utf8"));
const root = load(join(pkg, "monitoring.coreos.com/v1/ServiceMonitor.d.ts"));
let failed = 0;
for (const doc of docs) {
  const name = `servicemonitor/${doc?.metadata?.name}`;
  problems.length = 0;
  try {
    new ServiceMonitor(doc).validate();
  } catch (e) {
    problems.push(String(e.message).replace(/^data/, "").trim());
  }
  object(doc, root, "");
  if (problems.length) {
    failed++;
    for (const p of problems) console.log(`ERROR ${name}: ${p}`);
  } else console.log(`ok    ${name} (prometheus-operator CRD schema, unknown fields rejected)`);
}
process.exit(failed ? 1 : 0);
