"""
The grading tooling of the course assignment (assignment.py is its command line):

    wire.py       what crosses between the grader and the process that runs a student's code (safetensors + JSON)
    worker.py     that process's side: imports the tree, answers the tests' calls with the probes' outputs
    sandbox.py    where that process runs: a fresh tree, namespaces, resource limits, another user, killed whole
    gradebook.py  the gradebook: grades.csv, its history, submission times, Gradescope's results.json

Nothing here imports a project module; the worker imports the tree it grades, inside the sandbox.
"""
