#!/usr/bin/env python3
# Dev check (no GPU): emulates csrc/ops/gemm/gemm_cuda.cu's shared-memory layouts, ldmatrix (.trans) addressing
# and mma.sync m16n8k16 fragments for one 128x128x32 CTA tile, all four operand layouts, full and edge tiles,
# against numpy. Keep in sync with the kernel when its tiling changes. Prints max errors (~1e-14 = right).
import numpy as np
BM=BN=128; BK=32; PAD=8
rng=np.random.default_rng(0)

def ldsm(smem, addrs, trans):
    # addrs: 32 element offsets (lane l gives row address for matrix l//8, row l%8)
    regs=np.zeros((32,4,2))
    for j in range(4):
        rows=[smem[addrs[8*j+r]:addrs[8*j+r]+8] for r in range(8)]
        M=np.array(rows)  # stored 8x8
        for t in range(32):
            if not trans: regs[t,j]=M[t//4,2*(t%4):2*(t%4)+2]
            else: regs[t,j]=[M[2*(t%4),t//4],M[2*(t%4)+1,t//4]]
    return regs

def run(A_K,B_K,m,n,k):
    # op(A) [m,k], op(B) [k,n] for one tile (m,n<=128, k==32 one stage)
    opA=rng.standard_normal((m,k)); opB=rng.standard_normal((k,n))
    A = opA if A_K else opA.T.copy()      # stored
    Bs = opB.T.copy() if B_K else opB     # stored
    def load(KMAJ, X, R):
        sld = BK+PAD if KMAJ else 128+PAD
        s=np.zeros(128*(BK+PAD) if KMAJ else BK*(128+PAD))
        for c in range(512):
            if KMAJ: srow=c>>2; scol=(c&3)*8; r=srow; col=scol; rmax=R; cmax=k
            else: srow=c>>4; scol=(c&15)*8; r=srow; col=scol; rmax=k; cmax=R
            for e in range(8):
                v = X[r,col+e] if (r<rmax and col+e<cmax) else 0.0
                s[srow*sld+scol+e]=v
        return s
    sA=load(A_K,A,m); sB=load(B_K,Bs,n)
    C=np.zeros((128,128))
    for warp in range(8):
        wm=(warp>>2)*64; wn=(warp&3)*32
        acc=np.zeros((32,4,4,4))
        for kk in (0,16):
            af=np.zeros((32,4,4,2)); bf=np.zeros((32,4,2,2))
            for i in range(4):
                mrow=wm+i*16
                if A_K: addrs=[(mrow+(l&15))*(BK+PAD)+kk+(l>>4)*8 for l in range(32)]; af[:,i]=ldsm(sA,addrs,False)
                else: addrs=[(kk+(l&7)+((l>>3)>>1)*8)*(128+PAD)+mrow+((l>>3)&1)*8 for l in range(32)]; af[:,i]=ldsm(sA,addrs,True)
            for jn in (0,2):
                ncol=wn+jn*8
                if B_K: addrs=[(ncol+(l&7)+((l>>3)>>1)*8)*(BK+PAD)+kk+((l>>3)&1)*8 for l in range(32)]; r4=ldsm(sB,addrs,False)
                else: addrs=[(kk+(l&7)+((l>>3)&1)*8)*(128+PAD)+ncol+((l>>3)>>1)*8 for l in range(32)]; r4=ldsm(sB,addrs,True)
                bf[:,jn,0]=r4[:,0]; bf[:,jn,1]=r4[:,1]; bf[:,jn+1,0]=r4[:,2]; bf[:,jn+1,1]=r4[:,3]
            for i in range(4):
                for jn in range(4):
                    # reconstruct 16x16 A and 16x8 B from fragments, multiply, scatter to C frags
                    Af=np.zeros((16,16)); Bf=np.zeros((16,8))
                    for t in range(32):
                        g=t//4;q=t%4
                        Af[g,2*q:2*q+2]=af[t,i,0]; Af[g+8,2*q:2*q+2]=af[t,i,1]; Af[g,2*q+8:2*q+10]=af[t,i,2]; Af[g+8,2*q+8:2*q+10]=af[t,i,3]
                        Bf[2*q:2*q+2,g]=bf[t,jn,0]; Bf[2*q+8:2*q+10,g]=bf[t,jn,1]
                    D=Af@Bf
                    for t in range(32):
                        g=t//4;q=t%4
                        acc[t,i,jn]+=[D[g,2*q],D[g,2*q+1],D[g+8,2*q],D[g+8,2*q+1]]
        for t in range(32):
            g=t>>2;q=t&3
            for i in range(4):
                for jn in range(4):
                    for h in range(2):
                        for e in range(2):
                            C[wm+i*16+g+h*8, wn+jn*8+q*2+e]=acc[t,i,jn,h*2+e]
    ref=opA@opB
    err=np.abs(C[:m,:n]-ref).max()
    return err, np.abs(C[m:,:]).max() if m<128 else 0, np.abs(C[:,n:]).max() if n<128 else 0
for A_K in (True,False):
    for B_K in (True,False):
        print(A_K,B_K,run(A_K,B_K,128,128,32),run(A_K,B_K,100,77,21))
