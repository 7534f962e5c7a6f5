#!/usr/bin/env node
// Validate custom resources against the @kubernetes-models CRD models installed here.
//
//   node tests/deploy/validate-crds.mjs [--require-model] FILE...
//   node tests/deploy/validate-crds.mjs --all-models   # can every installed model be read?
//
// Every YAML document of every FILE is looked up by apiVersion/kind among the
// @kubernetes-models packages this directory depends on (package.json). A document with a
// model gets two checks:
//
// 1. the model's own validate(): the ajv validator compiled from the CRD's OpenAPI schema
//    (types, enums, required fields, patterns);
// 2. a strict pass for unknown fields. CRD schemas rarely say additionalProperties: false,
//    so the models accept `pathz:` where `paths:` was meant. The packages' generated .d.ts
//    files do list every property of every nested object, so the allowed field tree is
//    read from them: interfaces (with `extends`), type aliases, inline object types,
//    Array<...>, unions, and index signatures ([key: string]: ...), which allow any key.
//    An empty object type ({}) is a free-form field (x-kubernetes-preserve-unknown-fields)
//    and allows anything; a kind whose model has no fields at all (a CRD free-form from its
//    root, such as IstioOperator) gets the model's validate() only, and says so.
//
// One line per document: `ok`, `FAIL` (with file:line and the field path of each problem)
// or `no model` (built-in kinds, or a CRD no installed package covers). Exit status 1 if any
// document failed, or, with --require-model, if any had no model; 2 on bad usage.

import { readFileSync, readdirSync, statSync, existsSync } from "node:fs";
import { dirname, join, resolve, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseAllDocuments, LineCounter, isMap, isSeq, isPair, isScalar } from "yaml";

const HERE = dirname(fileURLToPath(import.meta.url));
const NODE_MODULES = join(HERE, "node_modules");

// ---------------------------------------------------------------------------------------
// Finding a model
// ---------------------------------------------------------------------------------------

function modelPackages() {
  const pkg = JSON.parse(readFileSync(join(HERE, "package.json"), "utf8"));
  return Object.keys(pkg.dependencies ?? {})
    .filter((name) => name.startsWith("@kubernetes-models/"))
    .map((name) => ({ name, dir: join(NODE_MODULES, name) }));
}

/** The model for apiVersion/kind: the package's `<group>/<version>/<Kind>` module and its
 * .d.ts, or null. */
function findModel(packages, apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !apiVersion.includes("/")) {
    return null; // core kinds (apiVersion: v1) are not CRDs
  }
  for (const { name, dir } of packages) {
    const base = join(dir, apiVersion, kind);
    const dts = base + ".d.ts";
    if (!existsSync(dts)) continue;
    // Older packages ship CommonJS .js beside ESM .mjs; newer ones ESM .js only.
    const module = existsSync(base + ".mjs") ? base + ".mjs" : base + ".js";
    return { pkg: name, module, dts, interfaceName: "I" + kind };
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// The field tree, from the generated .d.ts files
// ---------------------------------------------------------------------------------------

// Nodes: ANY (no constraint on fields), {object: Map name -> node, index: node|null},
// {array: node}, {union: [node]}. Object and array nodes are created before their members
// are resolved, so recursive types terminate.
const ANY = { any: true };
const PRIMITIVES = new Set([
  "string", "number", "boolean", "any", "unknown", "object", "null", "undefined", "never",
  "void", "bigint", "true", "false", "symbol", "Date",
]);

function tokenize(src, file) {
  const tokens = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (/\s/.test(c)) { i++; continue; }
    if (src.startsWith("//", i)) { i = src.indexOf("\n", i); if (i < 0) break; continue; }
    if (src.startsWith("/*", i)) {
      const end = src.indexOf("*/", i + 2);
      if (end < 0) throw new Error(`${file}: unterminated comment`);
      i = end + 2;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1, value = "";
      while (j < src.length && src[j] !== c) {
        if (src[j] === "\\") { value += src[j + 1]; j += 2; } else { value += src[j++]; }
      }
      tokens.push({ t: "str", v: value });
      i = j + 1;
      continue;
    }
    const word = /^[A-Za-z_$][\w$]*/.exec(src.slice(i, i + 256));
    if (word) { tokens.push({ t: "id", v: word[0] }); i += word[0].length; continue; }
    const num = /^\d+(\.\d+)?/.exec(src.slice(i, i + 64));
    if (num) { tokens.push({ t: "num", v: num[0] }); i += num[0].length; continue; }
    if (src.startsWith("=>", i)) { tokens.push({ t: "p", v: "=>" }); i += 2; continue; }
    if (src.startsWith("...", i)) { tokens.push({ t: "p", v: "..." }); i += 3; continue; }
    tokens.push({ t: "p", v: c });
    i++;
  }
  return tokens;
}

/** A parsed .d.ts module: its imports, re-exports and type declarations (as syntax). */
class Module {
  constructor(file) {
    this.file = file;
    this.imports = new Map(); // local name -> { from: specifier, name }
    this.decls = new Map(); // name -> { kind: "interface", bases, members } | { kind: "type", type }
    this.aliases = new Map(); // exported name -> local name
    this.reexports = new Map(); // exported name -> { from, name }
    this.starFrom = []; // export * from "..."
    this.toks = tokenize(readFileSync(file, "utf8"), file);
    this.pos = 0;
    this.parseTop();
    delete this.toks;
  }

  peek(o = 0) { return this.toks[this.pos + o]; }
  next() { return this.toks[this.pos++]; }
  is(v, o = 0) { const t = this.peek(o); return t !== undefined && t.v === v && t.t !== "str"; }
  expect(v) {
    const t = this.next();
    if (!t || t.v !== v) {
      throw new Error(`${this.file}: expected '${v}', found '${t?.v}' (token ${this.pos})`);
    }
    return t;
  }
  eat(v) { if (this.is(v)) { this.pos++; return true; } return false; }

  /** Skip to the end of the current statement: a `;` outside brackets, or the `}` that
   * closes a block the statement opened (class and function bodies). */
  skipStatement() {
    let depth = 0;
    while (this.pos < this.toks.length) {
      const t = this.next();
      if (t.t !== "p") continue;
      if ("{([<".includes(t.v)) depth++;
      else if ("})]>".includes(t.v)) { depth--; if (depth === 0 && t.v === "}" && !this.is(";") && !this.is(".")) return; }
      else if (t.v === ";" && depth <= 0) return;
    }
  }

  parseTop() {
    while (this.pos < this.toks.length) {
      if (this.eat("import")) { this.parseImport(); continue; }
      this.eat("export");
      this.eat("declare");
      const start = this.pos;
      try {
        if (this.is("interface")) { this.pos++; this.parseInterface(); continue; }
        if (this.is("type") && this.peek(1)?.t === "id") { this.pos++; this.parseTypeAlias(); continue; }
      } catch (e) {
        // Syntax this reader does not know (conditional types, ...): the declaration is
        // unusable, and an error only if a field tree needs it.
        this.decls.set(this.toks[start + 1].v, { kind: "error", error: e });
        this.pos = start;
        this.skipStatement();
        continue;
      }
      if (this.is("type") && this.is("{", 1)) { this.pos++; this.parseExportList(); continue; }
      if (this.is("{")) { this.parseExportList(); continue; }
      if (this.is("*")) {
        this.pos++;
        this.expect("from");
        this.starFrom.push(this.next().v);
        this.eat(";");
        continue;
      }
      this.skipStatement();
    }
  }

  parseImport() {
    this.eat("type");
    if (this.peek().t === "str") { this.pos++; this.eat(";"); return; } // side-effect import
    const names = [];
    if (this.peek().t === "id" && !this.is("{")) names.push([this.next().v, "default"]);
    this.eat(",");
    if (this.eat("{")) {
      while (!this.eat("}")) {
        this.eat("type");
        const name = this.next().v;
        const local = this.eat("as") ? this.next().v : name;
        names.push([local, name]);
        this.eat(",");
      }
    }
    this.expect("from");
    const from = this.next().v;
    for (const [local, name] of names) this.imports.set(local, { from, name });
    this.eat(";");
  }

  parseExportList() {
    this.expect("{");
    const list = [];
    while (!this.eat("}")) {
      this.eat("type");
      const name = this.next().v;
      const exported = this.eat("as") ? this.next().v : name;
      list.push([name, exported]);
      this.eat(",");
    }
    const from = this.eat("from") ? this.next().v : null;
    for (const [name, exported] of list) {
      if (from) this.reexports.set(exported, { from, name });
      else this.aliases.set(exported, name);
    }
    this.eat(";");
  }

  skipTypeParams() {
    if (!this.is("<")) return;
    let depth = 0;
    do {
      const t = this.next();
      if (t.v === "<") depth++;
      if (t.v === ">") depth--;
    } while (depth > 0);
  }

  parseInterface() {
    const name = this.next().v;
    this.skipTypeParams();
    const bases = [];
    if (this.eat("extends")) {
      do bases.push(this.parseType()); while (this.eat(","));
    }
    this.decls.set(name, { kind: "interface", bases, members: this.parseObjectType() });
  }

  parseTypeAlias() {
    const name = this.next().v;
    this.skipTypeParams();
    this.expect("=");
    this.decls.set(name, { kind: "type", type: this.parseType() });
    this.eat(";");
  }

  // Type syntax: { union } | { inter } | { array } | { object: members } | { ref, args } | { any }
  parseType() {
    this.eat("|");
    const options = [this.parseIntersection()];
    while (this.eat("|")) options.push(this.parseIntersection());
    return options.length === 1 ? options[0] : { union: options };
  }

  parseIntersection() {
    const parts = [this.parsePostfix()];
    while (this.eat("&")) parts.push(this.parsePostfix());
    return parts.length === 1 ? parts[0] : { inter: parts };
  }

  parsePostfix() {
    let type = this.parsePrimary();
    while (this.is("[")) {
      this.pos++;
      if (this.eat("]")) { type = { array: type }; continue; }
      this.parseType(); // indexed access T["x"]: not used for fields
      this.expect("]");
      type = { any: true };
    }
    return type;
  }

  parsePrimary() {
    const t = this.next();
    if (t.t === "str" || t.t === "num") return { any: true };
    if (t.v === "-" && this.peek().t === "num") { this.pos++; return { any: true }; }
    if (t.v === "{") { this.pos--; return { object: this.parseObjectType() }; }
    if (t.v === "(") {
      if (this.isFunctionType()) {
        this.pos--;
        this.skipBalanced();
        this.expect("=>");
        if (this.peek().t === "id" && this.is("is", 1)) this.pos += 2; // a type predicate
        this.parseType();
        return { any: true };
      }
      const inner = this.parseType();
      this.expect(")");
      if (this.eat("=>")) { this.parseType(); return { any: true }; }
      return inner;
    }
    if (t.v === "typeof" || t.v === "keyof" || t.v === "readonly") { this.parsePostfix(); return { any: true }; }
    if (t.v === "import" && this.is("(")) {
      this.pos++;
      const from = this.next().v;
      this.expect(")");
      this.expect(".");
      const name = this.next().v;
      return { ref: name, from, args: this.parseTypeArgs() };
    }
    if (t.t === "id") {
      let name = t.v;
      while (this.is(".") && this.peek(1)?.t === "id") { this.pos++; name += "." + this.next().v; }
      return { ref: name, args: this.parseTypeArgs() };
    }
    throw new Error(`${this.file}: unexpected '${t.v}' in a type (token ${this.pos})`);
  }

  /** After a `(`: whether its matching `)` is followed by `=>`. */
  isFunctionType() {
    let depth = 1, i = this.pos;
    for (; i < this.toks.length && depth > 0; i++) {
      if (this.toks[i].t !== "p") continue;
      if (this.toks[i].v === "(") depth++;
      if (this.toks[i].v === ")") depth--;
    }
    return this.toks[i]?.v === "=>";
  }

  skipBalanced() {
    let depth = 0;
    do {
      const t = this.next();
      if (t.t === "p" && "({[".includes(t.v)) depth++;
      if (t.t === "p" && ")}]".includes(t.v)) depth--;
    } while (depth > 0);
  }

  parseTypeArgs() {
    if (!this.eat("<")) return [];
    const args = [this.parseType()];
    while (this.eat(",")) args.push(this.parseType());
    this.expect(">");
    return args;
  }

  /** `{ "name"?: T; [key: string]: U; method(): V; }` -> { props: Map, index } */
  parseObjectType() {
    this.expect("{");
    const props = new Map();
    let index = null;
    while (!this.eat("}")) {
      this.eat("readonly");
      if (this.eat("[")) {
        this.next(); // the key's name
        this.expect(":");
        this.parseType();
        this.expect("]");
        this.expect(":");
        index = this.parseType();
      } else {
        const name = this.next().v;
        this.eat("?");
        if (this.is("(") || this.is("<")) {
          this.skipStatement(); // a method signature: not data
          continue;
        }
        this.expect(":");
        props.set(name, this.parseType());
      }
      if (!this.eat(";")) this.eat(",");
    }
    return { props, index };
  }
}

/** Resolves names across .d.ts modules into field-tree nodes, memoized. */
class FieldTrees {
  constructor() {
    this.modules = new Map();
    this.nodes = new Map();
  }

  module(file) {
    if (!this.modules.has(file)) this.modules.set(file, new Module(file));
    return this.modules.get(file);
  }

  /** The .d.ts file an import specifier names, from the importing file. */
  resolveSpecifier(spec, fromFile) {
    if (spec.startsWith(".")) {
      const base = resolve(dirname(fromFile), spec.replace(/\.(m?js)$/, ""));
      for (const f of [base + ".d.ts", join(base, "index.d.ts")]) if (existsSync(f)) return f;
      throw new Error(`${fromFile}: cannot resolve ${spec}`);
    }
    const parts = spec.split("/");
    const pkgName = spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
    const sub = parts.slice(pkgName.split("/").length).join("/");
    // Node's lookup: the nearest node_modules/<pkg> above the importing file.
    for (let dir = dirname(fromFile); ; dir = dirname(dir)) {
      const pkgDir = join(dir, "node_modules", pkgName);
      if (existsSync(join(pkgDir, "package.json"))) {
        if (!sub) {
          const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
          const types = pkg.types ?? pkg.typings ?? pkg.exports?.types ?? pkg.exports?.["."]?.types ?? "index.d.ts";
          return join(pkgDir, types);
        }
        const base = join(pkgDir, sub.replace(/\.(m?js)$/, ""));
        for (const f of [base + ".d.ts", join(base, "index.d.ts")]) if (existsSync(f)) return f;
        throw new Error(`${fromFile}: cannot resolve ${spec}`);
      }
      if (dir === dirname(dir)) throw new Error(`${fromFile}: package ${pkgName} not found`);
    }
  }

  /** The node for the type `name` as seen from module `file` (declared there, imported,
   * aliased or re-exported). */
  named(file, name, seen = new Set()) {
    const key = file + "#" + name;
    if (this.nodes.has(key)) return this.nodes.get(key);
    if (seen.has(key)) throw new Error(`${file}: circular alias ${name}`);
    seen.add(key);
    const mod = this.module(file);
    let node;
    const decl = mod.decls.get(name);
    if (decl?.kind === "error") throw decl.error;
    if (decl?.kind === "interface") {
      node = { object: new Map(), index: null };
      this.nodes.set(key, node); // before the members: recursion ends here
      for (const base of decl.bases) merge(node, this.build(file, base));
      // Own members, even none: an empty interface body is not a free-form object.
      for (const [prop, type] of decl.members.props) node.object.set(prop, this.build(file, type));
      if (decl.members.index) node.index = this.build(file, decl.members.index);
      return node;
    } else if (decl?.kind === "type") {
      node = this.build(file, decl.type);
    } else if (mod.aliases.has(name)) {
      node = this.named(file, mod.aliases.get(name), seen);
    } else if (mod.imports.has(name) || mod.reexports.has(name)) {
      const imp = mod.imports.get(name) ?? mod.reexports.get(name);
      node = this.named(this.resolveSpecifier(imp.from, file), imp.name, seen);
    } else {
      for (const from of mod.starFrom) {
        const target = this.resolveSpecifier(from, file);
        if (this.exports(target, name)) { node = this.named(target, name, seen); break; }
      }
      if (!node) throw new Error(`${file}: type ${name} is not declared or imported`);
    }
    this.nodes.set(key, node);
    return node;
  }

  exports(file, name) {
    const mod = this.module(file);
    return mod.decls.has(name) || mod.aliases.has(name) || mod.reexports.has(name) ||
      mod.starFrom.some((from) => this.exports(this.resolveSpecifier(from, file), name));
  }

  objectNode(file, { props, index }) {
    if (props.size === 0 && index === null) return ANY; // {}: free-form
    const node = { object: new Map(), index: index && this.build(file, index) };
    for (const [name, type] of props) node.object.set(name, this.build(file, type));
    return node;
  }

  build(file, type) {
    if (type.any) return ANY;
    if (type.object) return this.objectNode(file, type.object);
    if (type.array) return { array: this.build(file, type.array) };
    if (type.union) {
      const options = type.union.map((t) => this.build(file, t));
      return options.includes(ANY) ? ANY : { union: options };
    }
    if (type.inter) {
      // Distribute over unions: A & (B | C) is (A & B) | (A & C).
      let options = [{ object: new Map(), index: null }];
      for (const part of type.inter.map((t) => this.build(file, t))) {
        const alternatives = part.union ?? [part];
        options = options.flatMap((o) => alternatives.map((alt) => {
          const node = { object: new Map(o.object), index: o.index };
          merge(node, alt);
          return node;
        }));
      }
      return options.length === 1 ? options[0] : { union: options };
    }
    // A reference.
    const { ref, args } = type;
    if (PRIMITIVES.has(ref)) return ANY;
    if (ref === "Array" || ref === "ReadonlyArray") return { array: this.build(file, args[0]) };
    // Utility types that narrow which combinations of fields are valid, not which fields
    // exist (oneOf in the CRD): the fields are the first argument's.
    if (["Exclude", "Partial", "Required", "Readonly", "NonNullable"].includes(ref)) return this.build(file, args[0]);
    if (ref === "Record") return { object: new Map(), index: this.build(file, args[1]) };
    if (type.from) return this.named(this.resolveSpecifier(type.from, file), ref);
    return this.named(file, ref);
  }
}

/** Add the fields of `from` to the object node `into` (interface extends, intersections). */
function merge(into, from) {
  if (from === ANY || from.union || from.array) {
    into.index = ANY; // cannot list fields: allow any
    return;
  }
  for (const [name, node] of from.object) into.object.set(name, node);
  if (from.index) into.index = from.index;
}

/** Unknown fields of `value` under `node`, as [path, message]. Type mismatches are left to
 * the model's validator. */
function unknownFields(value, node, path = []) {
  if (node === ANY || value === null || typeof value !== "object") return [];
  if (node.array) {
    return Array.isArray(value) ? value.flatMap((v, i) => unknownFields(v, node.array, [...path, i])) : [];
  }
  if (node.union) {
    const shape = Array.isArray(value) ? "array" : "object";
    const candidates = node.union.filter((n) => n === ANY || (shape === "array" ? n.array : n.object));
    if (candidates.length === 0 || candidates.includes(ANY)) return [];
    const results = candidates.map((n) => unknownFields(value, n, path));
    return results.reduce((best, r) => (r.length < best.length ? r : best));
  }
  if (Array.isArray(value)) return [];
  const problems = [];
  for (const [key, child] of Object.entries(value)) {
    const sub = node.object.get(key) ?? node.index;
    if (sub) problems.push(...unknownFields(child, sub, [...path, key]));
    else problems.push([[...path, key], `unknown field "${key}"` + suggestion(key, [...node.object.keys()])]);
  }
  return problems;
}

function suggestion(key, known) {
  const near = known.filter((k) => editDistance(k.toLowerCase(), key.toLowerCase()) <= 2);
  if (near.length) return ` (did you mean ${near.map((k) => `"${k}"`).join(", ")}?)`;
  return known.length <= 12 ? ` (expected one of ${known.join(", ")})` : "";
}

function editDistance(a, b) {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

// ---------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------

function formatPath(path) {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : (i ? "." : "") + p)).join("") || "(root)";
}

/** The line of the YAML node at `path` (its key, for a map entry), or the nearest parent's. */
function lineOf(doc, lineCounter, path) {
  let node = doc.contents, line = node?.range ? lineCounter.linePos(node.range[0]).line : 1;
  for (const step of path) {
    let found = null;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && (isScalar(p.key) ? p.key.value : p.key) == step);
      if (pair) { found = pair.value; if (pair.key?.range) line = lineCounter.linePos(pair.key.range[0]).line; }
    } else if (isSeq(node) && typeof step === "number") {
      found = node.items[step];
      if (found?.range) line = lineCounter.linePos(found.range[0]).line;
    }
    if (!found) break;
    node = found;
  }
  return line;
}

function ajvPath(instancePath) {
  return instancePath.split("/").slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

/** --all-models: build the field tree of every kind every package models, to show that this
 * reader understands all of their .d.ts files. */
function checkAllModels(packages, trees) {
  let count = 0;
  for (const { name, dir } of packages) {
    const isDir = (...p) => statSync(join(...p)).isDirectory();
    for (const group of readdirSync(dir).filter((g) => g.includes(".") && isDir(dir, g))) {
      for (const version of readdirSync(join(dir, group)).filter((v) => isDir(dir, group, v))) {
        for (const f of readdirSync(join(dir, group, version)).filter((f) => f.endsWith(".d.ts") && f !== "index.d.ts")) {
          const kind = f.slice(0, -".d.ts".length);
          const dts = join(dir, group, version, f);
          if (!readFileSync(dts, "utf8").includes(`"kind": "${kind}"`)) continue; // a nested type
          trees.named(dts, "I" + kind);
          count++;
        }
      }
    }
    console.log(`ok        ${name}: field trees of ${count} kinds`);
    count = 0;
  }
}

async function main(argv) {
  if (argv.includes("--all-models")) {
    checkAllModels(modelPackages(), new FieldTrees());
    return 0;
  }
  const requireModel = argv.includes("--require-model");
  const files = argv.filter((a) => a !== "--require-model");
  if (files.length === 0 || files.some((f) => f.startsWith("--"))) {
    console.error("usage: node validate-crds.mjs [--require-model] FILE... | --all-models");
    return 2;
  }
  const packages = modelPackages();
  const trees = new FieldTrees();
  let failed = 0, noModel = 0, ok = 0;

  for (const file of files) {
    const rel = relative(process.cwd(), resolve(file));
    const shown = rel && !rel.startsWith("..") ? rel : file;
    const lineCounter = new LineCounter();
    const docs = parseAllDocuments(readFileSync(file, "utf8"), { lineCounter });
    for (const [i, doc] of (Array.isArray(docs) ? docs : [docs]).entries()) {
      const where = `${shown}#${i + 1}`;
      if (doc.errors.length) {
        failed++;
        console.log(`FAIL      ${where}: YAML: ${doc.errors[0].message}`);
        continue;
      }
      const data = doc.toJS();
      if (data === null || data === undefined) continue;
      const { apiVersion, kind } = data;
      const label = kind && apiVersion
        ? `${kind}/${data.metadata?.name ?? "?"} (${apiVersion})`
        : "(no apiVersion and kind: not a Kubernetes object)";
      const model = findModel(packages, apiVersion, kind);
      if (!model) {
        noModel++;
        console.log(`no model  ${where} ${label}`);
        continue;
      }
      const problems = [];
      const Model = (await import(pathToFileURL(model.module).href))[kind];
      try {
        new Model(data).validate();
      } catch (e) {
        if (!Array.isArray(e.errors)) throw e;
        for (const err of e.errors) {
          const path = ajvPath(err.instancePath);
          const detail = err.params?.allowedValues ? ` (${err.params.allowedValues.join(", ")})` : "";
          problems.push([path, `${err.message}${detail}`]);
        }
      }
      const tree = trees.named(model.dts, model.interfaceName);
      // A CRD whose whole schema is free-form (x-kubernetes-preserve-unknown-fields at the
      // root, as IstioOperator's) leaves its model no fields beyond the object's own.
      const freeForm = [...tree.object.keys()].every((k) => ["apiVersion", "kind", "metadata"].includes(k));
      if (!freeForm) problems.push(...unknownFields(data, tree));
      if (problems.length === 0) {
        ok++;
        const note = freeForm ? " (free-form schema: fields not checked)" : "";
        console.log(`ok        ${where} ${label} [${model.pkg}]${note}`);
        continue;
      }
      failed++;
      console.log(`FAIL      ${where} ${label} [${model.pkg}]`);
      for (const [path, message] of problems) {
        console.log(`          ${shown}:${lineOf(doc, lineCounter, path)}: ${formatPath(path)}: ${message}`);
      }
    }
  }
  console.log(`${ok} valid, ${failed} invalid, ${noModel} without a model`);
  return failed || (requireModel && noModel) ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
