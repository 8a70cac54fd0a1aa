// Layer ops of a Llama/Mistral decoder (exported as the `nn` namespace): RMSNorm (+ fused residual add),
// SwiGLU, embedding, cross-entropy and the chunked LM-head loss, forward and backward, CPU and CUDA.
export { rmsNorm, rmsNormBackward, RmsNormOptions, RmsNormResult, RmsNormBackwardOptions } from './norm';
export { swiglu, swigluBackward, SwigluBackwardOptions } from './swiglu';
export { embedding, embeddingBackward } from './embedding';
export { crossEntropy, lmHeadLoss, CrossEntropyOptions, LmHeadLossOptions, LmHeadLossResult } from './loss';
export { checkIds } from './util';
export { matmul, linear, MatmulOptions, LinearOptions } from '../matmul';
