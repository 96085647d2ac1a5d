import json, sys, io, contextlib, statistics
from fastpg import Config, train
configs = {
 "none_mask_relu_N16": dict(),
 "none_mask_tanh_N16": dict(activation="tanh"),
 "none_mask_relu_N8": dict(num_envs=8),
 "value_bootstrap_N16": dict(baseline="value", unfinished="bootstrap"),
 "value_mask_N16": dict(baseline="value"),
 "none_mask_relu_N16_T128": dict(num_steps=128),
}
for name, kw in configs.items():
    res=[]
    for seed in range(5):
        with contextlib.redirect_stdout(io.StringIO()):
            s=train(Config(seed=seed, quiet=True, max_env_steps=2_000_000, **kw))
        res.append(s)
    t=[s["time_to_solve_s"] or float("inf") for s in res]; st=[s["env_steps_to_solve"] or float("inf") for s in res]
    print(json.dumps({"config":name, "solved":sum(bool(s["solved"]) for s in res), "median_time_s":round(statistics.median(t),2), "max_time_s":round(max(t),2),
        "median_steps":statistics.median(st), "max_steps":max(st), "times":[round(x,1) for x in t], "sps_median": round(statistics.median(s["sps"] for s in res))}), flush=True)
