cd /work/main; source .venv/bin/activate; export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
for cfg in corpus:'{}' mend:'{"loc_corpus": "/work/shared/data/knowedit/full/zsre_mend_train.json"}' fact:'{"loc_corpus": "fact"}'; do
  name=${cfg%%:*}; hp=${cfg#*:}
  echo "=== $name $hp $(date)"
  python benchmarks/wise_routing.py --compute 20 --checkpoints 1,5,10,20 --data /work/shared/data/knowedit/full/ZsRE.json --hparams "$hp" --json results/wise-routing/$name-20.json 2>&1 | grep -v Loading
done
# smaller shards (corpus-savefreq5-20.json)
python benchmarks/wise_routing.py --compute 20 --checkpoints 1,5,10,20 --data /work/shared/data/knowedit/full/ZsRE.json --hparams '{"save_freq": 5}' --json results/wise-routing/corpus-savefreq5-20.json 2>&1 | grep -v Loading
