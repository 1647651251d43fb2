"""UNIMAL: universal morphology control on MuJoCo (the first kdistill domain)."""
