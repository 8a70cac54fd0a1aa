// `megabeam bench <name>`: the benchmarks shipped with the package.
import type { IO } from '../bench/util';

export async function benchCli(argv: string[], io: IO): Promise<number> {
  const [name, ...rest] = argv;
  switch (name) {
    case 'attention':
      return (await import('../bench/attention')).benchAttention(rest, io);
    case 'gemm':
      return (await import('../bench/gemm')).benchGemm(rest, io);
    case 'rope':
      return (await import('../bench/rope')).benchRope(rest, io);
    case 'ring':
      return (await import('../bench/ring')).benchRing(rest, io);
    case 'nn':
      return (await import('../bench/nn')).benchNn(rest, io);
    case 'model':
      return (await import('../bench/model')).benchModel(rest, io);
    case 'train':
      return (await import('../bench/train')).benchTrain(rest, io);
    default:
      io.err('usage: megabeam bench attention|gemm|rope|nn|model|ring|train [--help]');
      return 2;
  }
}
