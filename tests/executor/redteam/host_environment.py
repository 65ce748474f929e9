# property: the host's environment (a secret set by the test) is not visible
# expect: wrong_answer
# stdout: x
# stdout-lacks: rlef-redteam-secret
import os
print(sorted(os.environ.items()))
