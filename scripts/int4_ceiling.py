#!/usr/bin/env python3
"""How good can 4-bit weights get on a tiny fixture? (docs/quantization.md, "The int4 ceiling")

A float64 numpy re-implementation of the fixture's forward pass (checked against the golden
logits), run with the merged weights' seven projections replaced by their int4 (block 32)
round trip under several methods: round-to-nearest, an exhaustive grid search per block
(21 x 21 clipping pairs: a superset of what the exporter searches), GPTQ error compensation
with random-token calibration, and each projection alone. Prints mean cosine, top-1 agreement at
positions whose margin exceeds 0.1, raw top-1, and max abs error, over the 3 golden prompts.

    python3 scripts/int4_ceiling.py qwen2-tiny      # needs numpy only
"""
import json, struct, numpy as np, sys
import os
F=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','tests','fixtures','')
def load(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); out={}
    dt={'F32':np.float32,'I64':np.int64,'F16':np.float16,'BF16':None}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; out[k]=np.frombuffer(b[8+n+s:8+n+e],dtype=dt[v['dtype']]).reshape(v['shape'])
    return out
case=sys.argv[1] if len(sys.argv)>1 else 'qwen2-tiny'
W=load(F+f'reference/{case}-merged/model.safetensors'); R=load(F+f'reference/{case}.safetensors')
cfg=json.load(open(F+f'reference/{case}-merged/config.json'))
H=cfg['hidden_size']; nh=cfg['num_attention_heads']; nkv=cfg['num_key_value_heads']; hd=cfg.get('head_dim',H//nh); L=cfg['num_hidden_layers']; eps=cfg['rms_norm_eps']; theta=cfg['rope_theta']
def rms(x,w): return x/np.sqrt((x*x).mean(-1,keepdims=True)+eps)*w
def rope(x,pos):
    inv=1.0/theta**(np.arange(0,hd,2)/hd); f=pos[...,None]*inv; c=np.cos(np.concatenate([f,f],-1)); s=np.sin(np.concatenate([f,f],-1))
    x1,x2=x[...,:hd//2],x[...,hd//2:]; return x*c[:,None]+np.concatenate([-x2,x1],-1)*s[:,None]
def forward(W, ids, mask, pos, capture=None):
    B,S=ids.shape; x=W['model.embed_tokens.weight'][ids].astype(np.float64)
    causal=np.tril(np.ones((S,S),bool))
    for l in range(L):
        p=f'model.layers.{l}.'
        h=rms(x,W[p+'input_layernorm.weight'])
        if capture is not None: capture.setdefault(p+'attn_in',[]).append(h.reshape(-1,H)[mask.reshape(-1)>0])
        def lin(n,inp):
            y=inp@W[p+n+'.weight'].T
            if p+n+'.bias' in W: y=y+W[p+n+'.bias']
            return y
        q=lin('self_attn.q_proj',h).reshape(B,S,nh,hd); k=lin('self_attn.k_proj',h).reshape(B,S,nkv,hd); v=lin('self_attn.v_proj',h).reshape(B,S,nkv,hd)
        if p+'self_attn.q_norm.weight' in W: q=rms(q,W[p+'self_attn.q_norm.weight']); k=rms(k,W[p+'self_attn.k_norm.weight'])
        q=np.stack([rope(q[b],pos[b]) for b in range(B)]); k=np.stack([rope(k[b],pos[b]) for b in range(B)])
        rep=nh//nkv; k=np.repeat(k,rep,2); v=np.repeat(v,rep,2)
        sc=np.einsum('bshd,bthd->bhst',q,k)/np.sqrt(hd)
        m=causal[None,None]&(mask[:,None,None,:]>0); sc=np.where(m,sc,-1e30); sc=sc-sc.max(-1,keepdims=True); e=np.exp(sc)*m; a=e/np.maximum(e.sum(-1,keepdims=True),1e-30)
        o=np.einsum('bhst,bthd->bshd',a,v).reshape(B,S,nh*hd)
        if capture is not None: capture.setdefault(p+'o_in',[]).append(o.reshape(-1,nh*hd)[mask.reshape(-1)>0])
        x=x+lin('self_attn.o_proj',o)
        h=rms(x,W[p+'post_attention_layernorm.weight'])
        if capture is not None: capture.setdefault(p+'mlp_in',[]).append(h.reshape(-1,H)[mask.reshape(-1)>0])
        g=lin('mlp.gate_proj',h); u=lin('mlp.up_proj',h); a2=g/(1+np.exp(-g))*u
        if capture is not None: capture.setdefault(p+'down_in',[]).append(a2.reshape(-1,a2.shape[-1])[mask.reshape(-1)>0])
        x=x+lin('mlp.down_proj',a2)
    x=rms(x,W['model.norm.weight'])
    head=W.get('lm_head.weight',W['model.embed_tokens.weight'])
    return x@head.T
ids=R['input_ids']; mask=R['attention_mask']; pos=R['position_ids'].astype(np.float64)
ref=forward(W,ids,mask,pos)
print('f32 vs golden max', np.abs(ref-R['logits_merged'])[mask>0].max())
def metrics(lo):
    a=ref[mask>0]; b=lo[mask>0]
    cos=(a*b).sum(-1)/np.linalg.norm(a,axis=-1)/np.linalg.norm(b,axis=-1)
    s=np.sort(a,-1); margin=s[:,-1]-s[:,-2]; keep=margin>0.1
    agree=a.argmax(-1)==b.argmax(-1)
    return f'cosine {cos.mean():.4f}  top-1 {agree[keep].mean():.0%} of {keep.sum()}  raw {agree.mean():.0%}  max abs {np.abs(a-b).max():.3f}'
def rtn(w,bits=4,block=32):
    r,c=w.shape; wb=w.reshape(r,c//block,block); mn=np.minimum(wb.min(-1,keepdims=True),0); mx=np.maximum(wb.max(-1,keepdims=True),0)
    qmax=2**bits-1; sc=(mx-mn)/qmax; sc[sc==0]=1; zp=np.clip(np.round(-mn/sc),0,qmax); q=np.clip(np.round(wb/sc)+zp,0,qmax)
    return ((q-zp)*sc).reshape(r,c)
def search(w,bits=4,block=32):
    r,c=w.shape; wb=w.reshape(-1,block); out=np.empty_like(wb); qmax=2**bits-1
    for i,row in enumerate(wb):
        best=None
        mn0=min(row.min(),0); mx0=max(row.max(),0)
        for s1 in np.linspace(0.6,1.0,21):
          for s2 in np.linspace(0.6,1.0,21):
            mn=mn0*s1; mx=mx0*s2; sc=(mx-mn)/qmax
            if sc==0: continue
            zp=np.clip(np.round(-mn/sc),0,qmax); q=np.clip(np.round(row/sc)+zp,0,qmax); d=(q-zp)*sc; e=((d-row)**2).sum()
            if best is None or e<best[0]: best=(e,d)
        out[i]=best[1] if best else row
    return out.reshape(r,c)
def gptq(w,X,bits=4,block=32,damp=0.01, qf=rtn):
    # GPTQ with static per-block grids computed from original weights (RTN grid)
    w=w.copy().astype(np.float64); r,c=w.shape
    Hm=X.T@X; Hm+=damp*np.mean(np.diag(Hm))*np.eye(c)
    Hinv=np.linalg.cholesky(np.linalg.inv(Hm)).T  # upper
    Q=np.zeros_like(w)
    for b0 in range(0,c,block):
        # grid from current (error-updated) weights of this block
        wb=w[:,b0:b0+block]; mn=np.minimum(wb.min(-1),0); mx=np.maximum(wb.max(-1),0); qmax=2**bits-1
        sc=(mx-mn)/qmax; sc[sc==0]=1; zp=np.clip(np.round(-mn/sc),0,qmax)
        for j in range(b0,b0+block):
            q=(np.clip(np.round(w[:,j]/sc)+zp,0,qmax)-zp)*sc; Q[:,j]=q
            err=(w[:,j]-q)/Hinv[j,j]; w[:,j+1:]-=np.outer(err,Hinv[j,j+1:])
    return Q
LIN=['self_attn.q_proj','self_attn.k_proj','self_attn.v_proj','self_attn.o_proj','mlp.gate_proj','mlp.up_proj','mlp.down_proj']
INP={'self_attn.q_proj':'attn_in','self_attn.k_proj':'attn_in','self_attn.v_proj':'attn_in','self_attn.o_proj':'o_in','mlp.gate_proj':'mlp_in','mlp.up_proj':'mlp_in','mlp.down_proj':'down_in'}
def apply(fn, only=None):
    Q=dict(W)
    for l in range(L):
        for n in LIN:
            if only and n not in only: continue
            k=f'model.layers.{l}.{n}.weight'; Q[k]=fn(W[k].astype(np.float64), l, n)
    return Q
print('rtn', metrics(forward(apply(lambda w,l,n: rtn(w)),ids,mask,pos)))
for n in LIN: print(' rtn only',n, metrics(forward(apply(lambda w,l,n: rtn(w),[n]),ids,mask,pos)))
print('search', metrics(forward(apply(lambda w,l,n: search(w)),ids,mask,pos)))
print('rtn b16', metrics(forward(apply(lambda w,l,n: rtn(w,block=16)),ids,mask,pos)))
# calibration: random token sequences (not the validation prompts)
rng=np.random.default_rng(0); cids=rng.integers(0,381,(8,32)); cm=np.ones_like(cids); cp=np.tile(np.arange(32.0),(8,1))
cap={}; forward(W,cids,cm,cp,cap)
print('gptq', metrics(forward(apply(lambda w,l,n: gptq(w,np.concatenate(cap[f'model.layers.{l}.'+INP[n]]))),ids,mask,pos)))
print('int8', metrics(forward(apply(lambda w,l,n: (np.round(w/(np.abs(w).max(1,keepdims=True)/127))*(np.abs(w).max(1,keepdims=True)/127))),ids,mask,pos)))
