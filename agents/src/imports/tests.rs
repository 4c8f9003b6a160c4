use super::*;
use crate::agent::SourceFile;

fn task(files: &[(&str, &str)]) -> Task {
    Task {
        capability: CAPABILITY.into(),
        files: files.iter().map(|(p, t)| SourceFile { path: (*p).into(), text: (*t).into() }).collect(),
    }
}

fn imports_of(out: &Value, module: &str) -> Vec<String> {
    out["modules"][module]["imports"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[test]
fn relative_imports_resolve_from_modules_and_packages() {
    let out = ImportsAgent::new()
        .handle(&task(&[
            ("pkg/__init__.py", "from . import util\nfrom .sub import deep\n"),
            ("pkg/util.py", "from .sub.deep import thing\nfrom . import missing_name\n"),
            ("pkg/sub/__init__.py", "from .. import util\n"),
            ("pkg/sub/deep.py", "from ..util import helper\nfrom ... import nowhere\n"),
        ]))
        .unwrap();
    assert_eq!(imports_of(&out, "pkg"), vec!["pkg.sub.deep", "pkg.util"]);
    // `from . import missing_name` in a module: the package itself.
    assert_eq!(imports_of(&out, "pkg.util"), vec!["pkg", "pkg.sub.deep"]);
    assert_eq!(imports_of(&out, "pkg.sub"), vec!["pkg.util"]);
    assert_eq!(imports_of(&out, "pkg.sub.deep"), vec!["pkg.util"]);
    let unresolved = out["unresolved"].as_array().unwrap();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(unresolved[0]["module"], "pkg.sub.deep");
    assert_eq!(unresolved[0]["line"], 2);
}

#[test]
fn absolute_imports_pick_the_deepest_module_of_the_tree() {
    let out = ImportsAgent::new()
        .handle(&task(&[
            ("app/__init__.py", ""),
            ("app/models.py", "import os.path\nimport app.models.missing\nfrom app import views\n"),
            ("app/views.py", "import json, app\nfrom collections.abc import Mapping\n"),
        ]))
        .unwrap();
    assert_eq!(imports_of(&out, "app.models"), vec!["app.views"]);
    assert_eq!(imports_of(&out, "app.views"), vec!["app"]);
    assert_eq!(out["modules"]["app.views"]["external"], json!(["collections", "json"]));
    assert_eq!(out["modules"]["app.models"]["external"], json!(["os"]));
}

#[test]
fn packages_versus_modules() {
    // `from pkg import name` is the submodule when there is one, else the package.
    let tree: BTreeSet<String> = ["pkg", "pkg.a"].iter().map(|s| (*s).to_owned()).collect();
    let importer = ModuleFile { name: "main".into(), is_package: false };
    let from = |name: &str| RawImport::From { level: 0, module: "pkg".into(), name: name.into(), line: 1 };
    assert_eq!(resolve(&importer, &from("a"), &tree), Target::Internal("pkg.a".into()));
    assert_eq!(resolve(&importer, &from("func"), &tree), Target::Internal("pkg".into()));
    assert_eq!(resolve(&importer, &from("*"), &tree), Target::Internal("pkg".into()));
    let top = ModuleFile { name: "main".into(), is_package: false };
    let rel = RawImport::From { level: 1, module: String::new(), name: "x".into(), line: 1 };
    assert!(matches!(resolve(&top, &rel, &tree), Target::Unresolved(_)));
}

#[test]
fn a_three_module_cycle_through_nested_and_conditional_imports() {
    let out = ImportsAgent::new()
        .handle(&task(&[
            ("shop/__init__.py", ""),
            ("shop/cart.py", "from shop.pricing import price\n"),
            ("shop/pricing.py", "def price():\n    from . import tax\n    return tax.rate()\n"),
            ("shop/tax.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cart import Cart\n"),
            ("shop/report.py", "import shop.cart\n"),
        ]))
        .unwrap();
    let cycles = out["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 1, "{out}");
    assert_eq!(cycles[0]["modules"], json!(["shop.cart", "shop.pricing", "shop.tax"]));
    assert_eq!(cycles[0]["shortest"], json!(["shop.cart", "shop.pricing", "shop.tax", "shop.cart"]));
}

#[test]
fn syntax_errors_and_duplicate_modules_are_reported_not_fatal() {
    let out = ImportsAgent::new()
        .handle(&task(&[("a.py", "import b\n"), ("b.py", "def (:\n"), ("src/a.py", "import c\n")]))
        .unwrap();
    assert!(out["errors"]["b.py"].as_str().unwrap().contains("syntax error"));
    assert!(out["errors"]["src/a.py"].as_str().unwrap().contains("also defined"));
    assert_eq!(imports_of(&out, "a"), vec!["b"]);
}
