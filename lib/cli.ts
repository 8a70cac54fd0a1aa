// `megabeam <command>`: theta (RoPE base analysis), demo (the long-context fwd+bwd job), bench.
const USAGE = `usage: megabeam <command> [options]

commands:
  theta      RoPE base / scaling analysis for a context length (megabeam theta --help)
  demo       long-context attention forward+backward demo (GPU if present, else CPU)
  bench      benchmarks: megabeam bench attention|gemm|rope|nn|model|ring|train [--help]
  train      train a Mistral/Llama model on token files (megabeam train --help)
  plot       draw a training log: megabeam plot log.jsonl --out loss.svg
  launch     start the ranks of a distributed job: megabeam launch --nproc N script.js [args]
  info       build, devices and memory
`;

type IO = { out: (s: string) => void; err: (s: string) => void };
const io: IO = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n') };

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'theta': {
      const { thetaCli } = await import('./cli/theta');
      return thetaCli(rest, io);
    }
    case 'demo': {
      const { demoCli } = await import('./cli/demo');
      return demoCli(rest, io);
    }
    case 'bench': {
      const { benchCli } = await import('./cli/bench');
      return benchCli(rest, io);
    }
    case 'train': {
      const { trainCli } = await import('./cli/train');
      return trainCli(rest, io);
    }
    case 'plot': {
      const { plotCli } = await import('./cli/train');
      return plotCli(rest, io);
    }
    case 'launch': {
      const { launchCli } = await import('./cli/launch');
      return launchCli(rest, io);
    }
    case 'info': {
      const mb = await import('./index');
      io.out(JSON.stringify({
        cudaBuilt: mb.cuda.isBuilt(), cudaAvailable: mb.cuda.isAvailable(), reason: mb.cuda.unavailableReason(),
        devices: mb.cuda.devices(), cpuThreads: mb.cpuThreads(),
      }, null, 2));
      return 0;
    }
    case undefined:
    case '-h':
    case '--help':
      io.out(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      io.err(`megabeam: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 2;
  }
}
