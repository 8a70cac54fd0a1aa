// Error assertions: the thrown value is a MegabeamError with the given code.
import { MegabeamError } from '../../lib/errors';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type T = { ok(v: any, ...rest: any[]): unknown; fail(...rest: any[]): unknown };

export function throwsCode(t: T, fn: () => unknown, code: string | string[], msg?: string): void {
  const codes = Array.isArray(code) ? code : [code];
  try {
    fn();
  } catch (e) {
    t.ok(e instanceof MegabeamError && codes.includes(e.code),
      `${msg ?? 'throws'} ${codes.join('|')} (got ${e instanceof MegabeamError ? e.code : String(e)}: ${(e as Error)?.message})`);
    return;
  }
  t.fail(`${msg ?? 'expected a throw'}: ${codes.join('|')} (nothing thrown)`);
}

export async function rejectsCode(t: T, p: Promise<unknown> | (() => Promise<unknown>), code: string, msg?: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    t.ok(e instanceof MegabeamError && e.code === code,
      `${msg ?? 'rejects'} ${code} (got ${e instanceof MegabeamError ? e.code : String(e)})`);
    return;
  }
  t.fail(`${msg ?? 'expected a rejection'}: ${code}`);
}
