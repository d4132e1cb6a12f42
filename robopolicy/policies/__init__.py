"""Built-in policies, one package each. Importing this package registers none of them: the
registry (:mod:`robopolicy.policy`) imports only the module of the policy it is asked for."""
