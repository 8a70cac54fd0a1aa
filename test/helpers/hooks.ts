// The addon's test hooks (debugQueueError, debugQueueSleep, debugExternalMemory, debugAttentionNoTma) are
// exported only when MEGABEAM_TEST_HOOKS=1 is set as the addon initialises; package.json's "tap"."test-env" sets
// it for every test process (and the processes and workers they start inherit it).
import { native, NativeModule } from '../../lib/native';

type Hooks = Required<Pick<NativeModule, 'debugQueueError' | 'debugQueueSleep' | 'debugExternalMemory' | 'debugAttentionNoTma'>>;

export function hooks(): Hooks {
  const n = native();
  if (!n.debugQueueError || !n.debugQueueSleep || !n.debugExternalMemory || !n.debugAttentionNoTma)
    throw new Error('megabeam test hooks are absent: run tests through tap (it sets MEGABEAM_TEST_HOOKS=1), or set it yourself');
  return n as unknown as Hooks;
}
