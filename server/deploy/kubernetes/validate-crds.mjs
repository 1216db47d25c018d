#!/usr/bin/env node
// Validates the custom resources of Kubernetes manifests offline, with the models
// of @kubernetes-models (npm; the exact versions are package.json's, installed
// with `npm ci --ignore-scripts` into node_modules/, which is never committed).
//
//   node validate-crds.mjs FILE...     every document of every FILE
//   node validate-crds.mjs --versions  the model packages installed, or exit 3
//
// Each document must be an object of an apiVersion and kind that one of the model
// packages has (core objects are kubernetes-validate's), and:
//
//   * pass the model class's validate(): the CRD's OpenAPI schema as the package
//     compiled it (types, required fields, enums, patterns as RE2, lengths,
//     bounds), metadata as Kubernetes' ObjectMeta;
//   * name no field the model's schema does not name, as
//     `kubectl apply --validate=strict` refuses one. validate() alone lets an
//     unknown field pass, so the object is handed to it behind Proxies that record
//     which fields the compiled schema reads: an object's field it never reads is
//     unknown. Objects the schema leaves free-form (no properties: e.g. an
//     EnvoyFilter's patch value) and maps (labels) are not checked, as the API
//     server would not check them either;
//   * a field the model package predates (NEWER_THAN_MODELS, each with the
//     upstream release that has it) is allowed where listed, and checked here
//     only as that list says.
//
// Not checked: CEL rules (x-kubernetes-validations), defaults, list-type
// uniqueness, whatever a controller checks when it reads the object. Exit 0 when
// everything validates, 1 otherwise (each failure names its object and field),
// 2 on a usage error, 3 when the packages are not installed as package.json pins.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

// apiVersion -> the package (a dependency of package.json) whose models cover it.
const MODELS = {
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api",
  "gateway.envoyproxy.io/v1alpha1": "@kubernetes-models/envoy-gateway",
  "traefik.io/v1alpha1": "@kubernetes-models/traefik",
  "security.istio.io/v1": "@kubernetes-models/istio",
  "networking.istio.io/v1alpha3": "@kubernetes-models/istio",
};

// Fields the manifests use that the model packages are too old to know, by the
// path of their object (list items as []): allowed there, and checked with
// `check` (an error message, or null), which `checked` describes, instead of the
// model.
const NEWER_THAN_MODELS = [
  {
    apiVersion: "gateway.envoyproxy.io/v1alpha1",
    kind: "SecurityPolicy",
    object: "spec.extAuth",
    field: "statusOnError",
    why:
      "in Envoy Gateway v1.9.0's CRD (an enum of 4xx and 5xx codes), not in " +
      "v1.7.3, which @kubernetes-models/envoy-gateway tracks",
    checked: "an integer from 400 to 599",
    check: (value) =>
      Number.isInteger(value) && value >= 400 && value <= 599
        ? null
        : `must be an HTTP status code from 400 to 599, not ${JSON.stringify(value)}`,
  },
];

function usage(message) {
  console.error(`${message}\nusage: node validate-crds.mjs FILE... | --versions`);
  process.exit(2);
}

/** The installed versions of package.json's dependencies, or exit 3 when one is
 * missing or not the version pinned. */
function installed() {
  const manifest = JSON.parse(readFileSync(join(HERE, "package.json"), "utf8"));
  const versions = {};
  const wrong = [];
  for (const [name, pinned] of Object.entries(manifest.dependencies)) {
    let version = null;
    try {
      version = JSON.parse(readFileSync(join(HERE, "node_modules", name, "package.json"), "utf8")).version;
    } catch {
      // not installed
    }
    versions[name] = version;
    if (version !== pinned) wrong.push(`${name}@${pinned} (installed: ${version ?? "none"})`);
  }
  if (wrong.length) {
    console.error(
      `FAIL the validator's npm packages are not installed as package.json pins: ${wrong.join(", ")}\n` +
        `     run: npm ci --ignore-scripts --prefix ${HERE}`,
    );
    process.exit(3);
  }
  return versions;
}

/** `a.b[0].c` from an Ajv instancePath `/a/b/0/c`. */
function fieldPath(instancePath) {
  let out = "";
  for (const raw of instancePath.split("/").slice(1)) {
    const part = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    out += /^\d+$/.test(part) ? `[${part}]` : out ? `.${part}` : part;
  }
  return out || "(root)";
}

function describeError(error) {
  let message = error.message;
  if (error.keyword === "enum") message += `: ${error.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
  if (error.keyword === "additionalProperties") message += `: ${error.params.additionalProperty}`;
  return `${fieldPath(error.instancePath)}: ${message}`;
}

/** A copy of `value` whose objects are Proxies recording, in `nodes`, which of
 * their fields were read and whether their keys were listed. */
function tracked(value, path, shape, nodes) {
  if (Array.isArray(value)) return value.map((item, i) => tracked(item, `${path}[${i}]`, `${shape}[]`, nodes));
  if (value === null || typeof value !== "object") return value;
  const copy = {};
  for (const [key, item] of Object.entries(value)) {
    copy[key] = tracked(item, path ? `${path}.${key}` : key, shape ? `${shape}.${key}` : key, nodes);
  }
  const node = { path, shape, value, read: new Set(), listed: false };
  nodes.push(node);
  const record = (key) => typeof key === "string" && node.read.add(key);
  return new Proxy(copy, {
    get(target, key, receiver) {
      record(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      record(key);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      record(key);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
    ownKeys(target) {
      // additionalProperties (a map such as labels): every key is allowed.
      node.listed = true;
      return Reflect.ownKeys(target);
    },
  });
}

/** The model class of `doc`, or an error message. */
async function modelOf(doc) {
  const pkg = MODELS[doc.apiVersion];
  if (!pkg) {
    return `no model for apiVersion ${doc.apiVersion} (core objects are kubernetes-validate's; ` +
      `custom resources: ${Object.keys(MODELS).join(", ")})`;
  }
  const specifier = `${pkg}/${doc.apiVersion}/${doc.kind}`;
  try {
    const module = await import(specifier);
    if (typeof module[doc.kind]?.prototype?.validate !== "function") return `${specifier} has no model class ${doc.kind}`;
    return module[doc.kind];
  } catch (error) {
    if (error.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" || error.code === "ERR_MODULE_NOT_FOUND") {
      return `${pkg} has no model ${doc.kind} in ${doc.apiVersion}`;
    }
    throw error;
  }
}

/** The errors of one document (none: valid). */
async function validateDocument(doc, notes) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !doc.apiVersion || !doc.kind) {
    return ["(root): not a Kubernetes object (no apiVersion or kind)"];
  }
  const model = await modelOf(doc);
  if (typeof model === "string") return [`(root): ${model}`];

  const newer = NEWER_THAN_MODELS.filter((n) => n.apiVersion === doc.apiVersion && n.kind === doc.kind);
  // The model's validate() ignores the newer fields (it ignores any field it does
  // not know); they are checked here, and allowed by the unknown-field check.
  const nodes = [];
  const copy = tracked(doc, "", "", nodes);
  const laterErrors = [];
  for (const node of nodes) {
    for (const n of newer) {
      if (node.shape === n.object && Object.hasOwn(node.value, n.field)) {
        const problem = n.check(node.value[n.field]);
        if (problem) laterErrors.push(`${node.path}.${n.field}: ${problem} (${n.why})`);
        notes.add(`${doc.apiVersion} ${doc.kind} ${n.object}.${n.field}: ${n.why}; checked here only as ${n.checked}`);
      }
    }
  }

  const errors = [];
  try {
    // validate() of the model class, on the recorded copy (a model instance
    // would be a copy the Proxies could not see).
    model.prototype.validate.call(copy);
  } catch (error) {
    if (!Array.isArray(error.errors)) throw error;
    errors.push(...error.errors.map(describeError));
  }
  for (const node of nodes) {
    // Free-form (the schema names no field of it, and so reads none) or a map.
    if (node.listed || node.read.size === 0) continue;
    for (const key of Object.keys(node.value)) {
      if (node.read.has(key)) continue;
      if (newer.some((n) => n.object === node.shape && n.field === key)) continue;
      errors.push(`${node.path ? `${node.path}.` : ""}${key}: unknown field (the model's schema does not name it)`);
    }
  }
  return [...errors, ...laterErrors];
}

async function main(args) {
  if (args.length === 1 && args[0] === "--versions") {
    for (const [name, version] of Object.entries(installed())) console.log(`${name}@${version}`);
    return 0;
  }
  if (!args.length || args.some((arg) => arg.startsWith("-"))) usage("nothing to validate");
  const versions = installed();
  const yaml = await import("js-yaml");
  const notes = new Set();
  let total = 0;
  let failed = 0;
  let unreadable = 0;
  for (const file of args) {
    let docs;
    try {
      docs = yaml.loadAll(readFileSync(file, "utf8")).filter((doc) => doc !== null && doc !== undefined);
    } catch (error) {
      console.log(`FAIL ${file}: ${error.message}`);
      unreadable += 1;
      continue;
    }
    if (!docs.length) {
      console.log(`FAIL ${file}: no document`);
      unreadable += 1;
    }
    for (const doc of docs) {
      total += 1;
      const meta = (doc && doc.metadata) || {};
      const what = `${doc?.apiVersion ?? "?"} ${doc?.kind ?? "?"} ${meta.namespace ? `${meta.namespace}/` : ""}${meta.name ?? "?"}`;
      const pkg = MODELS[doc?.apiVersion];
      const source = pkg ? ` [${pkg}@${versions[pkg]}]` : "";
      const errors = await validateDocument(doc, notes);
      if (errors.length) {
        failed += 1;
        console.log(`FAIL ${file}: ${what}${source}`);
        for (const error of errors) console.log(`       ${error}`);
      } else {
        console.log(`ok   ${file}: ${what}${source}`);
      }
    }
  }
  for (const note of notes) console.log(`note ${note}`);
  console.log(`custom resources: ${total - failed} of ${total} valid${unreadable ? `; ${unreadable} file(s) unreadable` : ""}`);
  return failed || unreadable ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
