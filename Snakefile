# dtrl benchmark DAG: datasets -> pretraining per (task, seed) -> finetuning per (method, task, seed)
# -> report (results/tables/main.csv and figures). The experiment is config/config.yaml (the paper
# grid) with any --configfile merged on top; see config/README.md.
#
#   snakemake --cores all results/tables/main.csv                                       # paper grid
#   snakemake --cores all --configfile config/quick.yaml -- results/quick/tables/main.csv  # quick grid
#   snakemake --profile workflow/profiles/slurm results/tables/main.csv                  # on SLURM

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# The landing page of `snakemake --report`: REPORT.md's main table and findings (workflow/rules/report.smk).
report: "workflow/report/workflow.rst"


wildcard_constraints:
    family=r"[^/]+",
    task=r"[^/]+",
    method=r"[^/]+",
    seed=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


# Every run's summary.json is asked for as well as the tables, so that a deleted run is redone
# (Snakemake does not remake missing intermediate files while what was made from them is present).
rule all:
    default_target: True
    input:
        REPORT_MAIN,
        REPORT_MAIN_MD,
        REPORT_HTML,
        report_inputs,
    localrule: True
