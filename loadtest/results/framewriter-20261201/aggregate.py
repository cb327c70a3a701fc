import json, glob, statistics, os, re
import os; D=os.path.dirname(os.path.abspath(__file__))
def med(xs): return (statistics.median(xs), min(xs), max(xs)) if xs else None
def fmt(t, d=1):
    if not t: return '–'
    m,lo,hi=t
    f=lambda x: f"{x:,.0f}" if abs(x)>=1000 else f"{x:.{d}f}"
    return f"{f(m)} ({f(lo)}–{f(hi)})"
for rate in (200,20):
    rows={}
    for v in ('before','after'):
        for sysname in ('sluice','baseline'):
            rs=[json.load(open(f)) for f in sorted(glob.glob(f"{D}/fanout-{rate}-{v}-*/fanout-{sysname}-1.json"))]
            rows[(v,sysname)]=rs
    print(f"\nrate {rate}")
    for (v,s),rs in rows.items():
        p99=[r['latency_ms']['p99'] for r in rs]; p50=[r['latency_ms']['p50'] for r in rs]; cpu=[r['cpu_percent']['server'] for r in rs]
        lost=sum(r['lost'] for r in rs); dup=sum(r['duplicated'] for r in rs)
        print(v,s,len(rs),'p50',fmt(med(p50)),'p99',fmt(med(p99)),'cpu',fmt(med(cpu)),'lost',lost,'dup',dup, 'p99s', p99)
    # per-run ratios sluice/baseline within the same compare.py invocation
    for v in ('before','after'):
        rat=[s['latency_ms']['p99']/b['latency_ms']['p99'] for s,b in zip(rows[(v,'sluice')],rows[(v,'baseline')])]
        print(v,'p99 ratio per run', [round(x,2) for x in rat], 'median', round(statistics.median(rat),2))
    allb=[r['latency_ms']['p99'] for v in ('before','after') for r in rows[(v,'baseline')]]
    print('baseline p99 all runs median', statistics.median(allb), allb)
print('\ncapacity')
for v in ('before','after'):
    for s in ('sluice','baseline'):
        rs=[json.load(open(f)) for f in sorted(glob.glob(f"{D}/capacity-{v}-*/latency-{s}-1.json"))]
        if rs: print(v,s,[r.get('max_deliveries_per_sec') for r in rs], [r.get('latency_ms',{}).get('p99') for r in rs])
