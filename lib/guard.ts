// Receiver checks for the exported classes. `Tensor.prototype.dispose.call({})` (or any method taken off
// a prototype and called on something else) would otherwise die on a private field with a bare
// TypeError; every method and accessor of a guarded class first checks that `this` is a real instance
// (made by its constructor, not merely inheriting its prototype) and throws a coded ERR_ARG if not.
import { ArgumentError } from './errors';

/** Safe text for any value in an error message: Symbols, BigInts, null-prototype objects, hostile proxies. */
export function show(x: unknown): string {
  try {
    if (typeof x === 'symbol') return x.toString();
    if (typeof x === 'bigint') return `${x}n`;
    if (typeof x === 'string') return JSON.stringify(x.length > 40 ? `${x.slice(0, 40)}...` : x);
    if (typeof x === 'function') return 'a function';
    if (x === null || typeof x !== 'object') return String(x);
    if (Array.isArray(x)) return `an array of ${x.length}`;
    const name = Object.getPrototypeOf(x)?.constructor?.name;
    return typeof name === 'string' && name ? `a ${name}` : 'an object';
  } catch {
    return 'an unprintable value';
  }
}

/**
 * Wraps every prototype method and accessor of C with a receiver check. Returns the function the
 * constructor calls to mark `this` as real, unless `isInstance` is given (a class with its own brand check).
 */
export function guardReceivers(C: Function, isInstance?: (x: unknown) => boolean): (self: object) => void {
  const real = new WeakSet<object>();
  const is = isInstance ?? ((x: unknown) => typeof x === 'object' && x !== null && real.has(x));
  const proto = C.prototype as object;
  for (const key of Reflect.ownKeys(proto)) {
    if (key === 'constructor') continue;
    const d = Object.getOwnPropertyDescriptor(proto, key)!;
    const label = `${C.name}.${String(key)}`;
    const bad = (self: unknown): ArgumentError =>
      new ArgumentError(`${label}: called on ${show(self)}, which is not a ${C.name} made by its constructor`);
    const wrap = (f: Function): Function => {
      const async = f.constructor?.name === 'AsyncFunction';
      return {
        [f.name]: function (this: unknown, ...a: unknown[]): unknown {
          if (!is(this)) {
            if (async) return Promise.reject(bad(this));
            throw bad(this);
          }
          return f.apply(this, a);
        },
      }[f.name];
    };
    if (typeof d.value === 'function') d.value = wrap(d.value);
    if (d.get) d.get = wrap(d.get) as () => unknown;
    if (d.set) d.set = wrap(d.set) as (v: unknown) => void;
    Object.defineProperty(proto, key, d);
  }
  return (self: object) => { real.add(self); };
}

/** An options argument: undefined means none; anything but a plain object (null, a number...) is ERR_ARG. */
export function optionsArg<T extends object>(op: string, o: T | undefined): T {
  if (o === undefined) return {} as T;
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ArgumentError(`${op}: options must be an object, got ${show(o)}`);
  return o;
}
